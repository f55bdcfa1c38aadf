"""``detflow ui``: the MLflow UI on detflow's tracking store, bound to the loopback interface;
``detflow server``: a team MLflow tracking server (SQL backend store + proxied artifact destination).

Both run ``mlflow`` in its own process group; Ctrl-C, SIGTERM or SIGHUP stop the whole group
(``mlflow`` and its uvicorn/gunicorn workers) before the command returns.
"""
from __future__ import annotations

import sys

import typer

__all__ = ["register", "ui_cmd", "ui_command_line", "server_cmd"]


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
    from ..signals import run_process_group

    try:
        code = run_process_group(cmd)
    except KeyboardInterrupt:
        return
    if code not in (0, -2, -15, 130, 143):
        raise RuntimeFailure(f"mlflow ui exited with code {code}")


def server_cmd(
    backend_store_uri: str = typer.Option(..., "--backend-store-uri", envvar="MLFLOW_BACKEND_STORE_URI",
                                          help="SQLAlchemy URL of the runs/registry DB, e.g. postgresql+psycopg2://"
                                          "USER:PASS@HOST:5432/mlflow (or sqlite:///FILE); keep the password out of "
                                          "`ps` by setting MLFLOW_BACKEND_STORE_URI instead."),
    artifacts_destination: str = typer.Option(..., "--artifacts-destination", help="Where the server stores artifacts: "
                                              "s3://bucket/prefix (AWS_* variables) or a directory."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback unless told otherwise)."),
    port: int = typer.Option(5000, "--port", min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Server worker processes."),
    allowed_hosts: list[str] = typer.Option([], "--allowed-host", help="Host header to accept besides localhost "
                                            "(repeatable; needed when clients use a DNS name)."),
) -> None:
    """Start an MLflow tracking server for a team and print its URL (credentials redacted).

    Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL
    for a non-AWS S3; MLFLOW_BACKEND_STORE_URI for the database URL); clients then set
    MLFLOW_TRACKING_URI to the printed URL.

    Example: detflow server --backend-store-uri postgresql+psycopg2://mlflow:PW@127.0.0.1:5432/mlflow --artifacts-destination s3://mlflow-artifacts --port 5000
    """
    from ..errors import RuntimeFailure
    from ..storage import redact
    from ..tracking.server import ServerSpec, is_loopback, server_command, server_env, server_url

    spec = ServerSpec(backend_store_uri, artifacts_destination, host=host, port=port, workers=workers,
                      allowed_hosts=tuple(allowed_hosts))
    cmd = server_command(spec)
    if not is_loopback(host):
        typer.echo(f"warning: listening on {host}: the server has no authentication; put it behind a VPN or proxy", err=True)
    typer.echo(f"MLflow tracking server: {server_url(host, port)}  (Ctrl-C to stop)")
    typer.echo(f"  backend store: {redact(backend_store_uri)}")
    typer.echo(f"  artifacts:     {redact(artifacts_destination)}")
    typer.echo(f"  clients:       export MLFLOW_TRACKING_URI={server_url(host, port)}")
    from ..signals import run_process_group

    try:
        code = run_process_group(cmd, env=server_env(spec))
    except KeyboardInterrupt:
        return
    if code not in (0, -2, -15, 130, 143):
        raise RuntimeFailure(f"mlflow server exited with code {code} (backend {redact(backend_store_uri)})")


def register(app: typer.Typer) -> None:
    app.command("ui")(ui_cmd)
    app.command("server")(server_cmd)
