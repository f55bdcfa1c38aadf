"""Error types with their CLI exit codes: 2 for bad input, 1 for a runtime failure."""
from __future__ import annotations

__all__ = ["DetflowError", "UserInputError", "ConfigError", "DataError", "RuntimeFailure"]


class DetflowError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UserInputError(DetflowError):
    """Bad input from the user (YAML, dataset, CLI argument, checkpoint): one line, exit 2."""

    exit_code = 2


class ConfigError(UserInputError):
    """A config file or override that does not validate. ``errors`` holds one line per problem,
    each ``FILE: dotted.path: expected …, got …``."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class DataError(UserInputError):
    """A dataset that fails validation (see ``detflow data check``)."""


class RuntimeFailure(DetflowError):
    """Something failed while running (a worker, a server): exit 1."""
