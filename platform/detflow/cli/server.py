"""``detflow ui``: the MLflow UI on detflow's tracking store, bound to the loopback interface."""
from __future__ import annotations

import subprocess
import sys

import typer

__all__ = ["register", "ui_cmd", "ui_command_line"]


def ui_command_line(host: str, port: int) -> list[str]:
    """The ``mlflow ui`` command serving the store :func:`detflow.tracking.configure` selects."""
    from ..tracking import artifact_root, configure, uses_embedded_store

    uri = configure()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if uses_embedded_store():
        cmd += ["--default-artifact-root", artifact_root().as_uri()]
    return cmd


def ui_cmd(
    port: int = typer.Option(5000, "--port", min=1, max=65535, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback by default; use SSH port forwarding to reach it)."),
) -> None:
    """Start the MLflow UI on detflow's store ($DETFLOW_HOME/mlflow.db, or MLFLOW_TRACKING_URI) and print its URL.

    Example: detflow ui --port 5000   (then open http://127.0.0.1:5000)
    """
    from ..errors import RuntimeFailure
    from ..tracking import configure, redact_url

    uri = configure()
    if uri.startswith(("http://", "https://")):
        typer.echo(f"MLFLOW_TRACKING_URI points at a tracking server: open {redact_url(uri)}")
        return
    cmd = ui_command_line(host, port)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    typer.echo(f"MLflow UI for {redact_url(uri)}: {url}  (Ctrl-C to stop)", err=False)
    try:
        code = subprocess.call(cmd)
    except KeyboardInterrupt:
        return
    if code not in (0, -2, 130):
        raise RuntimeFailure(f"mlflow ui exited with code {code}")


def register(app: typer.Typer) -> None:
    app.command("ui")(ui_cmd)
