"""Checkpoint directories (layout in docs/architecture.md): ``model.pt`` + ``config.yaml`` + ``meta.json``.

Writes are atomic (:mod:`detflow.atomic`): everything goes into a hidden sibling temp directory,
is fsynced, and is renamed (or atomically swapped) onto the final name, so a reader never sees a
half-written checkpoint (temp names start with ``.tmp-`` and are ignored by :func:`list_checkpoints`;
:func:`prune_checkpoints` removes leftovers). ``best/`` is published only after its epoch was
reported (:func:`report_then_publish`). ``model.pt`` is read with ``weights_only=True``; non
tensor state (numpy arrays in data caches, RNG states) is stored as tensors and plain containers.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from ..atomic import atomic_dir, is_temp, read_json_state, remove_temps
from ..errors import UserInputError

__all__ = [
    "MODEL_FILE", "CONFIG_FILE", "META_FILE", "save_checkpoint", "load_checkpoint_state", "read_meta",
    "read_config", "list_checkpoints", "prune_checkpoints", "publish_checkpoint", "is_checkpoint",
    "load_checkpoint_model", "report_then_publish", "rng_state", "set_rng_state", "pack_tree", "unpack_tree", "local_checkpoint",
]

MODEL_FILE, CONFIG_FILE, META_FILE = "model.pt", "config.yaml", "meta.json"
_EPOCH_RE = re.compile(r"epoch_(\d+)")
_ND = "__ndarray__"


# --------------------------------------------------------------------------- tensor-safe trees
def pack_tree(obj: Any) -> Any:
    """Turn numpy arrays (and tuples) inside ``obj`` into tensors / lists loadable with weights_only."""
    if isinstance(obj, np.ndarray):
        return {_ND: torch.from_numpy(np.ascontiguousarray(obj)), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: pack_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [pack_tree(v) for v in obj]
    return obj


def unpack_tree(obj: Any) -> Any:
    """Inverse of :func:`pack_tree` (tuples come back as lists)."""
    if isinstance(obj, dict):
        if _ND in obj:
            return obj[_ND].numpy().astype(obj["dtype"], copy=False)
        return {k: unpack_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack_tree(v) for v in obj]
    return obj


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors (weights_only-loadable)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))
    npd = state["numpy"]
    np.random.set_state(("MT19937", npd["keys"].numpy().astype(np.uint32), npd["pos"], npd["has_gauss"], npd["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- directories
def _config_dict(config: Any) -> dict:
    return config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)


def save_checkpoint(path: str | os.PathLike, *, state: dict[str, Any], config: Any, meta: dict[str, Any]) -> Path:
    """Atomically write a checkpoint directory at ``path`` (replacing an existing one).

    The files go into a temporary sibling directory, are fsynced, and the directory is renamed (or
    swapped, :func:`detflow.atomic.swap_dirs`) onto ``path``: a reader sees the old or the new
    checkpoint, never a mix.

    Args:
        state: ``{"model", "ema", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", ...}``.
        config: the resolved TrainConfig (or its dict), written as ``config.yaml``.
        meta: ``{"model", "num_classes", "category_ids", "class_names", "epoch", "metrics", ...}``.
    """
    with atomic_dir(path) as tmp:
        torch.save(pack_tree(state), tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(_config_dict(config), sort_keys=False))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=float))
    return Path(path)


def publish_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Atomically copy the checkpoint directory ``src`` to ``dst`` (e.g. ``best/``): the copy is made in
    a temporary sibling and swapped in, so ``dst`` always holds one complete checkpoint."""
    if not is_checkpoint(src):
        raise UserInputError(f"{src}: not a complete checkpoint directory; nothing published to {dst}")
    with atomic_dir(dst) as tmp:
        for name in (MODEL_FILE, CONFIG_FILE, META_FILE):
            shutil.copyfile(Path(src) / name, tmp / name)
    return Path(dst)


def report_then_publish(report: Callable[[], Any], checkpoint: str | os.PathLike | None,
                        best_dir: str | os.PathLike | None, better: bool) -> None:
    """Report an epoch (``report()``, e.g. ``ray.train.report``), and only once it returned publish
    ``checkpoint`` as ``best_dir`` when it is ``better``. A process killed before or during the report
    therefore never leaves ``best/`` holding weights of an epoch that was never reported."""
    report()
    if better and best_dir and checkpoint is not None:
        publish_checkpoint(checkpoint, best_dir)


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A complete checkpoint directory (not a temp one, all three files present)."""
    p = Path(path)
    return (p.is_dir() and not is_temp(p.name)
            and all((p / f).is_file() for f in (MODEL_FILE, CONFIG_FILE, META_FILE)))


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete ``epoch_*`` checkpoints under ``root``, oldest epoch first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _EPOCH_RE.match(p.name) and is_checkpoint(p)]
    return sorted(found, key=lambda p: (int(_EPOCH_RE.match(p.name).group(1)), p.name))


def prune_checkpoints(root: str | os.PathLike, keep_last: int, protect: tuple[str | os.PathLike, ...] = (),
                      *, stale_temp_s: float = 0.0) -> list[Path]:
    """Delete all but the last ``keep_last`` epoch checkpoints, and the temporary directories
    (``.tmp-*``, ``.old-*``) a crashed write left behind that are at least ``stale_temp_s`` seconds
    old; returns the deleted paths."""
    root = Path(root)
    keep = {Path(p).resolve() for p in protect}
    ckpts = list_checkpoints(root)
    doomed = [p for p in ckpts[: max(len(ckpts) - keep_last, 0)] if p.resolve() not in keep]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed + remove_temps(root, older_than_s=stale_temp_s)


# --------------------------------------------------------------------------- reading
def local_checkpoint(path: str | os.PathLike) -> Path:
    """A local directory for ``path``; an ``s3://`` URI is downloaded once per process
    (:func:`detflow.storage.materialize`) and the copy removed at exit."""
    from ..storage import materialize

    p = materialize(path) if "://" in str(path) else Path(path).expanduser()
    if not is_checkpoint(p):
        raise UserInputError(f"{path}: not a detflow checkpoint directory (expected {MODEL_FILE}, {CONFIG_FILE}, {META_FILE})")
    return p


def load_checkpoint_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``model.pt`` of a checkpoint (weights_only=True), numpy arrays restored."""
    p = local_checkpoint(path)
    return unpack_tree(torch.load(p / MODEL_FILE, map_location=map_location, weights_only=True))


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of a checkpoint; a corrupt one is a one-line error (exit 2) naming the file."""
    return read_json_state(local_checkpoint(path) / META_FILE, "checkpoint meta",
                           "use another checkpoint (e.g. the previous epoch_*) or re-create this one")


def read_config(path: str | os.PathLike):
    """The resolved TrainConfig stored in a checkpoint."""
    from ..config import load_config
    from ..config.train import TrainConfig

    return load_config(TrainConfig, local_checkpoint(path) / CONFIG_FILE)


def load_checkpoint_model(path: str | os.PathLike):
    """Build the model of a checkpoint with its EMA weights (else the raw weights), in eval mode.

    Returns:
        ``(model, train_config, meta)``.
    """
    import detmodels

    local = local_checkpoint(path)
    cfg, meta = read_config(local), read_meta(local)
    model = detmodels.create_model(meta["model"], num_classes=int(meta["num_classes"]), **cfg.model.create_kwargs())
    state = load_checkpoint_state(local)
    weights = state["ema"]["module"] if state.get("ema") else state["model"]
    model.load_state_dict(weights)
    return model.eval(), cfg, meta
