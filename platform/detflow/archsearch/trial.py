"""Body of one NAS trial on Ray Tune: the sampled SpineNet spec at proxy scale (SpineNet §4: 0.25
feature scale, reduced resolution, few epochs, AP on held-out train images), its cost, and a real
proxy training on Ray Train (``run_training``) reporting every epoch, cost included, to Tune.

A trial that Tune restarts (crash retry, resumed search) saves the same spec, reads its cached cost
and continues its training run from the last checkpoint (``resume=True``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config.compose import Layer, compose
from ..config.train import TrainConfig
from .config import NasConfig
from .search import REJECTED_KEY, SPEC_KEY, cost_metric

__all__ = ["nas_trial_fn", "proxy_config", "save_trial_spec", "trial_spec_path", "trial_run_name"]


def trial_spec_path(exp_dir: str | Path, trial_id: str) -> Path:
    """Where a trial's proxy-scale spec YAML lives (``<nas dir>/specs/<trial_id>.yaml``)."""
    return Path(exp_dir) / "specs" / f"{trial_id}.yaml"


def trial_run_name(cfg: NasConfig, trial_id: str) -> str:
    """The trial's training run name (its MLflow run name and Ray Train directory)."""
    return f"{cfg.name}-{trial_id}"


def proxy_config(cfg: NasConfig, base: TrainConfig, spec_path: Path, proxy_data: dict, name: str,
                 trials_dir: str) -> TrainConfig:
    """``base`` with the proxy task as an overlay (SpineNet §4): the trial's spec, the held-out split
    (``proxy_data``: ``train`` / ``val`` annotation paths, ``images``), the proxy image size and
    epochs with validation every epoch (the scheduler and Tune need the metric in every report), the
    search's trial resources and storage."""
    train: dict = {"epochs": cfg.proxy.epochs, "eval_interval": 1}
    if cfg.proxy.max_steps_per_epoch:
        train["max_steps_per_epoch"] = cfg.proxy.max_steps_per_epoch
    images = proxy_data["images"]
    res = cfg.resources
    proxy = {"name": name, "model": {"name": "spinenet", "spec": str(spec_path)},
             "data": {"image_size": cfg.proxy.image_size,
                      "train": {"annotations": proxy_data["train"], "images": images},
                      "val": {"annotations": proxy_data["val"], "images": images}},
             "train": train, "storage": trials_dir,
             "scaling": {"workers": res.workers, "cpus_per_worker": res.cpus_per_worker,
                         "gpus_per_worker": res.gpus_per_worker}}
    return compose(TrainConfig, Layer(base, f"NAS {cfg.name} base"), Layer(proxy, f"NAS {cfg.name}, trial {name} (proxy task)"))


def save_trial_spec(config: dict, cfg: NasConfig, path: Path):
    """The trial's spec at the proxy's ``filter_size_scale``, saved to ``path``."""
    from detmodels import ScaleSettings, save_spec, spec_from_dict

    spec = spec_from_dict(config[SPEC_KEY])
    scale = dataclasses.replace(spec.scale or ScaleSettings(), filter_size_scale=cfg.proxy.filter_size_scale)
    spec = dataclasses.replace(spec, scale=scale, name=f"{spec.name}-{path.stem}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_spec(spec, path)
    return spec


def trial_cost(cfg: NasConfig, base: TrainConfig, spec_path: Path) -> dict[str, float]:
    """``{"cost/params_M", "cost/gmacs"[, "cost/latency_ms"]}`` of the trial's proxy model, measured
    once (cached beside the spec: a restarted trial reports the same cost)."""
    cache = spec_path.with_suffix(".cost.json")
    if cache.exists():
        return json.loads(cache.read_text())
    import detmodels

    from ..atomic import atomic_write
    from .cost import measure_cost

    model = detmodels.create_model("spinenet", num_classes=base.model.num_classes or 80, spec=str(spec_path))
    costs = measure_cost(model, cfg.proxy.image_size, cfg.cost, spec_path.parent / f"{spec_path.stem}_onnx")
    values = {cost_metric(k): float(v) for k, v in costs.items()}
    atomic_write(cache, json.dumps(values))
    return values


def nas_trial_fn(config: dict, *, base: TrainConfig, base_dir: str, nas: dict, parent_run_id: str,
                 exp_dir: str, trials_dir: str, proxy_data: dict, env: dict[str, str] | None = None) -> None:
    """One Tune trial: spec → cost → proxy training (reports carry ``cost/…``). A rejected sample
    (a spec no repair makes valid) reports nothing: the search records it and carries on."""
    from ray import tune

    from ..storage import apply_public_env

    apply_public_env(env or {})  # the node's own settings win
    if REJECTED_KEY in config:
        return
    from ..train import run_training

    cfg = NasConfig.model_validate(nas)
    trial_id = tune.get_context().get_trial_id()
    spec_path = trial_spec_path(exp_dir, trial_id)
    spec = save_trial_spec(config, cfg, spec_path)
    costs = trial_cost(cfg, base, spec_path)
    name = trial_run_name(cfg, trial_id)
    train_cfg = proxy_config(cfg, base, spec_path, proxy_data, name, trials_dir)
    tags = {"detflow.nas": cfg.name, "detflow.trial_id": trial_id, "detflow.trial_label": spec.name,
            "mlflow.runName": spec.name}
    result = run_training(train_cfg, config_dir=base_dir, parent_run_id=parent_run_id, tags=tags, progress=False,
                          tune_report=True, resume=True, report_extra=costs)
    if result.history:
        # the last epoch once more, from this process: a trial restarted after its training had
        # finished (the driver died before receiving the last report) has reported nothing yet
        tune.report({**result.history[-1], **costs})
