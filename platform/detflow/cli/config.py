"""``detflow config validate``: check any detflow config file (kind detected from its keys)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

__all__ = ["register", "validate_cmd"]

config_app = typer.Typer(
    help="Inspect and validate config files.\n\nExample: detflow config validate train.yaml --set train.epochs=2",
    no_args_is_help=True,
)


@config_app.command("validate")
def validate_cmd(
    file: Path = typer.Argument(..., help="Config YAML (train, workflow, sweep, NAS …).", show_default=False),
    set_: list[str] = typer.Option([], "--set", help="Override a field: a.b.c=VALUE (repeatable)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config (overrides and defaults applied) as YAML."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Config kind instead of detecting it (e.g. train)."),
) -> None:
    """Validate FILE: print `ok`, or one error per line (FILE: field.path: expected …, got …) and exit 2.

    Example: detflow config validate workflows/configs/rtmdet_tiny_synth.yaml --set train.epochs=2 --print-config
    """
    import yaml

    from ..config.kinds import load_any_config
    from ..errors import ConfigError

    try:
        chosen, cfg = load_any_config(file, set_, kind)
    except ConfigError as exc:
        for line in exc.errors:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    if print_config:
        typer.echo(f"# kind: {chosen.name}")
        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
    typer.echo("ok")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
