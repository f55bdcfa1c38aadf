"""The NAS proxy task's data: a deterministic held-out split of the training annotations."""
from __future__ import annotations

import json
import random
from pathlib import Path

from ..atomic import atomic_write

__all__ = ["holdout_split"]


def holdout_split(annotations: Path, out_dir: Path, fraction: float, seed: int) -> tuple[Path, Path]:
    """Split a COCO file by image into ``proxy_train.json`` / ``proxy_val.json`` (same seed, same split).

    The reward is measured on images the proxy never trains on (SpineNet §4 holds out part of train).
    """
    data = json.loads(Path(annotations).read_text())
    ids = sorted(img["id"] for img in data["images"])
    random.Random(seed).shuffle(ids)
    n_val = max(1, int(round(len(ids) * fraction)))
    val_ids = set(ids[:n_val])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, keep in (("proxy_train.json", lambda i: i not in val_ids), ("proxy_val.json", lambda i: i in val_ids)):
        part = dict(data)
        part["images"] = [im for im in data["images"] if keep(im["id"])]
        part["annotations"] = [a for a in data["annotations"] if keep(a["image_id"])]
        path = out_dir / name
        atomic_write(path, json.dumps(part))
        paths.append(path)
    return paths[0], paths[1]
