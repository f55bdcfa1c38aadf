"""``detflow config validate`` (any config file, by its ``kind:`` line) and ``detflow config migrate``
(add the ``kind:`` line to files written before it was required)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import command_group

__all__ = ["register", "validate_cmd", "migrate_cmd"]

config_app = command_group("Inspect, validate and migrate config files.",
                           "detflow config validate train.yaml --set train.epochs=2")


@config_app.command("validate")
def validate_cmd(
    file: Path = typer.Argument(..., help="Config YAML (kind: train | workflow | sweep | nas).", show_default=False),
    set_: list[str] = typer.Option([], "--set", help="Override a field: a.b.c=VALUE (repeatable)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config (overrides and defaults applied) as YAML."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Require this kind (train, workflow, sweep, nas)."),
) -> None:
    """Validate FILE: print `ok`, or one error per line (FILE: field.path: expected …, got …) and exit 2.

    Example: detflow config validate workflows/configs/rtmdet_tiny_synth.yaml --set train.epochs=2 --print-config
    """
    import yaml

    from ..errors import ConfigError
    from ..sdk import validate

    try:
        chosen, cfg = validate(file, set_, kind=kind)
    except ConfigError as exc:
        for line in exc.errors:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    if print_config:
        typer.echo(f"# kind: {chosen}")
        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
    typer.echo("ok")


@config_app.command("migrate")
def migrate_cmd(
    files: list[Path] = typer.Argument(..., help="Config YAML files to give a `kind:` line.", show_default=False),
    check: bool = typer.Option(False, "--check", help="Change nothing; exit 1 if a file needs migrating."),
    kind: Optional[str] = typer.Option(None, "--kind", help="The kind to add (default: the kind each file looks like)."),
) -> None:
    """Add the `kind:` line each config file now needs, after its leading comments; every other byte is
    kept (one line is inserted, the YAML is not re-dumped) and the file is replaced atomically. A file
    that has `kind:` is left alone.

    Example: detflow config migrate workflows/configs/*.yaml --check
    """
    from ..errors import ConfigError

    pending, errors = [], []
    for path in files:
        try:
            new_text = _migrated(path, kind)
        except ConfigError as exc:
            errors.extend(exc.errors)
            continue
        if new_text is None:
            typer.echo(f"{path}: ok (has kind)")
        elif check:
            pending.append(path)
            typer.echo(f"{path}: needs migration (run 'detflow config migrate {path}')")
        else:
            _replace(path, new_text)
            typer.echo(f"{path}: added 'kind: {_added_kind(new_text)}'")
    for line in errors:
        typer.echo(line, err=True)
    if errors:
        raise typer.Exit(2)
    if pending:
        raise typer.Exit(1)


def _migrated(path: Path, kind: str | None) -> str | None:
    """The text of ``path`` with its ``kind:`` line added (None: it has one); ConfigError when the
    kind cannot be told or the result would not read back as that kind."""
    from ..config.base import load_unique, read_yaml
    from ..config.kinds import KIND_NAMES, add_kind_line, looks_like
    from ..errors import ConfigError

    data = read_yaml(path)  # a YAML error or an unreadable file: ConfigError naming it
    if isinstance(data, dict) and "kind" in data:
        return None
    if kind is not None and kind not in KIND_NAMES:
        raise ConfigError([f"--kind {kind}: expected one of {' | '.join(KIND_NAMES)}"])
    guess = kind or (looks_like(data) or (None, None))[0]
    if guess is None:
        raise ConfigError([f"{path}: (top level): cannot tell its kind; give it with --kind "
                           f"{' | '.join(KIND_NAMES)}"])
    text = path.read_bytes().decode("utf-8")
    new_text = add_kind_line(text, guess)
    if new_text is None or not isinstance(load_unique(new_text), dict) or load_unique(new_text).get("kind") != guess:
        raise ConfigError([f"{path}: (top level): cannot insert 'kind: {guess}' as a line (is it a flow mapping?); "
                           f"add it by hand"])
    return new_text


def _added_kind(text: str) -> str:
    import re

    return re.search(r"^kind[ \t]*:[ \t]*(\S+)", text, re.MULTILINE).group(1)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` over ``path`` atomically (a temp file in the same directory, then ``os.replace``),
    keeping the file's permission bits."""
    import os

    from ..atomic import atomic_write

    mode = path.stat().st_mode & 0o7777
    atomic_write(path, text.encode("utf-8"), mode=mode)
    os.chmod(path, mode)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
