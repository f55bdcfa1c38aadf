"""Step cache keys and cache validity.

A step's key is the SHA-256 of: its kind, its resolved parameters (with ``defaults``), the code
identity (detflow version, git commit and uncommitted diff), the keys of the steps it needs (so a
change upstream re-keys every descendant), and a content fingerprint of each local file or
directory it reads — named in its parameters or inside the ``config:`` base files they reference
(annotation files and weights are hashed; image directories listed recursively by names, sizes and
modification times). Outputs are reused only while
every artifact they list still exists in its storage (a local path or an object-store URL).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from .. import artifact_store
from ..version import __version__
from .schema import Workflow

__all__ = ["topological_order", "step_keys", "path_fingerprint", "code_identity", "outputs_exist", "artifact_paths"]

# Output keys whose values are stored locations (or lists/dicts of them).
ARTIFACT_KEYS = {"checkpoint", "last_checkpoint", "config", "onnx", "table_csv", "table_md", "plot",
                 "train_json", "val_json", "images_dir", "best_config", "spec", "dataset", "path"}
_FILE_KEYS = {"annotations", "images", "config", "spec", "pretrained", "teacher"}
_MAX_CONFIG_DEPTH = 3
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
    """Content fingerprint of a file (its hash; size + mtime above 64 MiB) or a directory (a recursive
    listing of relative names, sizes and modification times)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        h.update(_file_digest(p))
    elif p.is_dir():
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                h.update(f"{os.path.relpath(os.path.join(root, name), p)}:{st.st_size}:{st.st_mtime_ns};".encode())
    else:
        h.update(b"missing")
    return h.hexdigest()[:16]


def _file_digest(p: Path) -> bytes:
    st = p.stat()
    return p.read_bytes() if st.st_size <= _HASH_LIMIT else f"{st.st_size}:{st.st_mtime_ns}".encode()


def _external_files(node: Any, found: dict[str, str], base: Path | None = None, depth: int = 0) -> dict[str, str]:
    """``{path: fingerprint}`` of every local file ``node`` references (absolute, or relative to ``base``
    inside a config file), following ``config:`` base YAMLs into the files they reference."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _FILE_KEYS and isinstance(value, str) and not artifact_store.is_uri(value):
                path = Path(value) if os.path.isabs(value) or base is None else base / value
                if path.is_absolute():
                    found[str(path)] = path_fingerprint(path)
                    if key == "config" and path.is_file() and depth < _MAX_CONFIG_DEPTH:
                        _external_files(_read_config(path), found, path.parent, depth + 1)
            else:
                _external_files(value, found, base, depth)
    elif isinstance(node, list):
        for item in node:
            _external_files(item, found, base, depth)
    return found


def _read_config(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None  # the step reports the bad file when it runs; its own bytes are in the key already


@functools.lru_cache(maxsize=1)
def code_identity() -> str:
    """The detflow code a step runs: version, git commit and a hash of the uncommitted diff of the
    checkout it is imported from (just the version for an installed wheel)."""
    root = Path(__file__).resolve().parents[3]
    parts = [__version__]
    for args in (["rev-parse", "HEAD"], ["diff", "HEAD", "--", "platform", "models"]):
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=30, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            break
        parts.append(hashlib.sha256(out).hexdigest()[:16])
    return ":".join(parts)


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
            "code": code_identity(),
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
