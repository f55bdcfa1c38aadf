"""Step cache keys and cache validity.

A step's key is the SHA-256 of: its kind, its resolved parameters (with ``defaults``), the detflow
version, the keys of the steps it needs (so a change upstream re-keys every descendant), and a
content fingerprint of each external file or directory it reads (annotation files are hashed;
image directories by file names, sizes and modification times). Outputs are reused only while
every artifact they list still exists in its storage (a local path or an object-store URL).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .. import __version__, artifact_store
from .schema import Workflow

__all__ = ["topological_order", "step_keys", "path_fingerprint", "outputs_exist", "artifact_paths"]

# Output keys whose values are stored locations (or lists/dicts of them).
ARTIFACT_KEYS = {"checkpoint", "last_checkpoint", "config", "onnx", "table_csv", "table_md", "plot",
                 "train_json", "val_json", "images_dir", "best_config", "spec", "dataset", "path"}
_FILE_KEYS = {"annotations", "images", "config", "spec", "pretrained"}
_HASH_LIMIT = 64 * 2**20


def topological_order(wf: Workflow) -> list[str]:
    """Step ids so that every step comes after its needs (stable: file order among ready steps)."""
    order: list[str] = []
    done: set[str] = set()
    remaining = [s.id for s in wf.steps]
    while remaining:
        ready = [sid for sid in remaining if set(wf.step(sid).needs) <= done]
        if not ready:
            raise ValueError(f"cycle among steps {remaining}")
        order.extend(ready)
        done.update(ready)
        remaining = [sid for sid in remaining if sid not in done]
    return order


def path_fingerprint(path: str | Path) -> str:
    """Content fingerprint of a file (hash; size+mtime above 64 MiB) or a directory (listing)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        st = p.stat()
        if st.st_size <= _HASH_LIMIT:
            h.update(p.read_bytes())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    elif p.is_dir():
        for entry in sorted(os.scandir(p), key=lambda e: e.name):
            st = entry.stat()
            h.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    else:
        h.update(b"missing")
    return h.hexdigest()[:16]


def _external_files(node: Any, found: dict[str, str]) -> dict[str, str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _FILE_KEYS and isinstance(value, str) and os.path.isabs(value):
                found[value] = path_fingerprint(value)
            else:
                _external_files(value, found)
    elif isinstance(node, list):
        for item in node:
            _external_files(item, found)
    return found


def step_keys(wf: Workflow) -> dict[str, str]:
    """``{step id: cache key}`` for every step (computable before anything runs)."""
    defaults = wf.defaults.model_dump(mode="json", exclude_none=True)
    keys: dict[str, str] = {}
    for sid in topological_order(wf):
        step = wf.step(sid)
        params = step.with_.model_dump(mode="json")
        payload = {
            "kind": step.uses,
            "params": params,
            "defaults": defaults,
            "version": __version__,
            "needs": {n: keys[n] for n in sorted(step.needs)},
            "files": _external_files({"params": params, "defaults": defaults}, {}),
        }
        keys[sid] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
    return keys


def artifact_paths(outputs: dict) -> list[str]:
    """Artifact locations (paths or URLs) listed in a step's outputs (top-level artifact keys; a
    mapping or list under such a key, like ``dataset``, contributes its string values)."""
    paths: list[str] = []
    for key, value in outputs.items():
        if key not in ARTIFACT_KEYS:
            continue
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        paths.extend(v for v in values if isinstance(v, str))
    return paths


def outputs_exist(outputs: dict) -> bool:
    """True when every artifact in ``outputs`` still exists in its storage (unreachable storage: False)."""
    try:
        return all(artifact_store.exists(p) for p in artifact_paths(outputs))
    except Exception:  # noqa: BLE001 — an unreadable cache entry is a miss, never a failed run
        return False
