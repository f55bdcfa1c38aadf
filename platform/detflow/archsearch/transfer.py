"""The transfer step of a SpineNet search: the architecture found on the proxy task, at full scale.

The search trains every sample at the proxy's reduced ``filter_size_scale`` and resolution (SpineNet
§4); the block graph it finds is then built at the target model's scale settings (§3.3) and trained
with the base training config. :func:`full_scale_spec` writes that spec; :func:`write_train_config`
writes the ``kind: train`` YAML that ``detflow train`` (or a workflow's downstream ``train`` step)
runs as is:

>>> model = base.model.model_dump(mode="json")                                  # doctest: +SKIP
>>> spec = full_scale_spec("nas/specs/abc.yaml", model, Path("best_spec.yaml"))  # doctest: +SKIP
>>> write_train_config(base, spec, Path("best_train.yaml"), "nas-best", base_dir=Path("configs"))  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from ..config.compose import Layer, compose
from ..config.train import TrainConfig

__all__ = ["full_scale_spec", "write_train_config"]


def full_scale_spec(best_spec: str | Path, base_model: dict, out: Path) -> Path:
    """The searched block graph at the base model's scale, saved to ``out``.

    The scale settings are those of the named variant (``spinenet_49s`` …), of the base ``spec`` for
    ``spinenet``, else SpineNet-49's (``scale: null``).
    """
    from detmodels import SPINENET_VARIANTS, load_spec, save_spec

    name = str(base_model.get("name", "spinenet"))
    variant = SPINENET_VARIANTS.get(name.removeprefix("spinenet_"))
    if variant is not None:
        scale = variant.scale
    else:
        spec = base_model.get("spec")
        scale = load_spec(spec).scale if spec and Path(spec).is_file() else None
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return save_spec(dataclasses.replace(load_spec(best_spec), scale=scale), out)


def _spec_location(spec_path: str | Path) -> str:
    """A local spec as an absolute path; a stored one (``s3://…``) as is."""
    text = str(spec_path)
    return text if "://" in text else str(Path(text).resolve())


def _absolute_data_paths(data: dict, base_dir: Path | None) -> dict:
    """The dataset paths of a dumped TrainConfig made absolute (relative ones against ``base_dir``)."""
    from ..paths import resolve_path

    for split in ("train", "val"):
        entry = (data.get("data") or {}).get(split)
        for key in ("annotations", "images") if entry else ():
            if "://" not in str(entry[key]):
                entry[key] = str(resolve_path(entry[key], base_dir))
    return data


def write_train_config(base: TrainConfig, spec_path: str | Path, out: Path, name: str, *,
                       base_dir: Path | None = None) -> Path:
    """Write ``base`` with ``model: {name: spinenet, spec: <spec_path>}`` and ``name`` to ``out`` as a
    full ``kind: train`` YAML; returns ``out``.

    The model's other options (classes, head, …) and every other section come from ``base``; dataset
    paths are written absolute (relative ones taken against ``base_dir``, the base config file's
    directory, else the current directory) so the file runs from anywhere.
    """
    from ..atomic import atomic_write

    source = f"NAS transfer ({name})"
    overlay = {"name": name, "model": {"name": "spinenet", "spec": _spec_location(spec_path)}}
    cfg = compose(TrainConfig, Layer(base, "base training config"), Layer(overlay, source))
    data = {"kind": "train", **_absolute_data_paths(cfg.model_dump(mode="json", exclude_unset=True), base_dir)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, yaml.safe_dump(data, sort_keys=False))
    return out
