"""The ``detflow`` command line: one Typer app; each area registers its commands from its own module.

Exit codes: 0 success, 2 bad input (config, dataset, arguments, checkpoint), 1 runtime failure,
130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (both handled like Ctrl-C, see :mod:`detflow.signals`).
"""
from __future__ import annotations

import sys

import typer

from .. import __version__
from ..errors import DetflowError
from . import bench, compare, config, data, evaluate, export, models, predict, search, server, train, val, workflow

app = typer.Typer(
    name="detflow",
    help="Train, distill, quantize and benchmark real-time detectors on Ray, tracked in MLflow.\n\n"
    "Example: detflow run workflows/quickstart.yaml",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"detflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """detflow: real-time detector workflows on Ray + MLflow."""


# Each area's module registers its commands; a module that fails to import is an error, never skipped.
for _module in (config, data, evaluate, val, models, train, predict, export, workflow, search, compare, bench, server):
    _module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app with SIGTERM and SIGHUP handled like Ctrl-C; an interrupted command
    exits ``128 + signal`` after its cleanup and with this process's Ray shut down."""
    from ..signals import interrupt_on_signals, shutdown_ray

    with interrupt_on_signals() as interrupt:
        code = _run(argv)
        if code == 130:  # typer's code for a KeyboardInterrupt that ended the command
            shutdown_ray()
            code = interrupt.exit_code or code
    return code


def _run(argv: list[str] | None) -> int:
    """Run the app, turning detflow errors into one-line messages and exit codes."""
    try:
        # Without standalone mode click *returns* the code of a ``typer.Exit(code)`` (and of --help: 0).
        code = app(args=argv, standalone_mode=False)
    except DetflowError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except Exception as exc:  # click usage errors carry their own exit code (2)
        import click

        try:  # recent typer vendors click (typer._click): its exceptions are not click.ClickException
            from typer._click.exceptions import ClickException as VendoredClickException
        except ImportError:
            VendoredClickException = click.ClickException
        if isinstance(exc, (click.ClickException, VendoredClickException)):
            exc.show()
            return exc.exit_code
        raise
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
