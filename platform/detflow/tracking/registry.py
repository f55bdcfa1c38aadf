"""Reading the MLflow model registry: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` → the
version's artifacts on local disk (what :meth:`detflow.tracking.Run.register_model` registered: a
run's artifact folder, or a logged model's artifacts for a version made from ``models:/<model_id>``).

Example::

    from detflow.tracking.registry import download_model_version
    local = download_model_version("models:/coco_tiny/3", Path("/tmp/cache"))
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator

from ..atomic import atomic_dir
from ..errors import UserInputError

__all__ = ["parse_model_uri", "download_model_version", "model_version_label"]

_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_\-]+))/?")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``(name, version, alias)`` of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (one-line
    UserInputError otherwise)."""
    m = _URI.fullmatch(uri.strip())
    if not m:
        raise UserInputError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    return m["name"], m["version"], m["alias"]


@contextlib.contextmanager
def _registry_lookup(uri: str) -> Iterator[None]:
    """Turn the registry's "no such model / version / alias" into a one-line :class:`UserInputError`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise UserInputError(f"{uri}: no such registered model version in {mlflow.get_tracking_uri()} "
                             f"({str(exc).splitlines()[0]})") from None


def model_version_label(uri: str) -> str:
    """``NAME/VERSION`` of the registered version ``uri`` (an alias resolved to its version now): the
    form of a ``detflow.upstream_version`` lineage tag."""
    from .run import _client

    name, version, alias = parse_model_uri(uri)
    if alias is None:
        return f"{name}/{version}"
    with _registry_lookup(uri):
        return f"{name}/{_client().get_model_version_by_alias(name, alias).version}"


def download_model_version(uri: str, cache: Path) -> Path:
    """The artifacts of the registered version ``uri`` in ``cache/<name>-v<version>/`` (downloaded
    once: a version's artifacts never change; an alias is resolved to its version first)."""
    import mlflow

    from .run import _client

    name, version, alias = parse_model_uri(uri)
    client = _client()
    with _registry_lookup(uri):
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        # a version registered from a logged model: its artifacts are the model's (models:/<model_id>)
        source = (mv.source if str(mv.source).startswith("models:/m-")
                  else client.get_model_version_download_uri(name, mv.version))
    dst = Path(cache) / f"{name}-v{mv.version}"
    if not dst.is_dir():
        with atomic_dir(dst) as tmp:
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp))
    return dst
