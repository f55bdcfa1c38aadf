"""``model.pretrained`` of a training config → a checkpoint directory, resolved once on the driver
by :func:`detflow.train.runner.resolve_train_config`.

Forms::

    model.pretrained: official                 # pull (or reuse) the variant's official COCO weights
    model.pretrained: models:/coco_tiny/3      # a registered MLflow model version (or models:/NAME@ALIAS)
    model.pretrained: ckpt/run/best            # a detflow checkpoint directory (relative to the config)
    model.pretrained: s3://bucket/ckpt/best    # kept as is (read where it is used)
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserInputError

__all__ = ["resolve_pretrained", "registered_checkpoint", "is_reference", "OFFICIAL"]

OFFICIAL = "official"


def is_reference(value: str) -> bool:
    """Whether a ``pretrained`` value names weights by reference (``official``, ``models:/…``), not
    by path: callers that make paths absolute leave it alone."""
    return value == OFFICIAL or value.startswith("models:/")


def resolve_pretrained(value: str, model: str, base: str | os.PathLike | None = None) -> str:
    """The checkpoint ``value`` names, as an absolute path (or an unchanged ``scheme://`` URI).

    ``official`` pulls ``model``'s release (:func:`detflow.weights.pull.pull`, honouring
    ``DETFLOW_WEIGHTS_BASE_URL``); ``models:/…`` downloads the registered version's artifacts into
    ``$DETFLOW_HOME/weights/registry/`` and returns the checkpoint directory inside; anything else
    is a path taken against ``base`` (the config file's directory).
    """
    from ..paths import resolve_path

    if value == OFFICIAL:
        from .pull import pull

        return str(pull(model))
    if value.startswith("models:/"):
        return str(registered_checkpoint(value))
    if "://" in value:
        return value
    return str(resolve_path(value, base))


def registered_checkpoint(uri: str) -> Path:
    """The checkpoint directory of the registered version ``uri`` (``models:/NAME/VERSION`` or
    ``models:/NAME@ALIAS``), downloaded once into ``$DETFLOW_HOME/weights/registry/``."""
    from ..engine.checkpoint import is_checkpoint
    from ..tracking.registry import download_model_version
    from .pull import weights_dir

    local = download_model_version(uri, weights_dir() / "registry")
    found = [local] if is_checkpoint(local) else sorted(
        p.parent for p in local.rglob("model.pt") if is_checkpoint(p.parent))
    if not found:
        raise UserInputError(f"{uri}: the registered version holds no detflow checkpoint "
                             "(model.pt, config.yaml, meta.json)")
    return found[0]
