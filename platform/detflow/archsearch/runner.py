"""SpineNet architecture search: Optuna (TPE or random) proposes specs, each is built from its spec
and trained on the proxy task through ``run_training`` (Ray Train); the held-out AP is the reward.

State lives in an Optuna SQL study we own plus a small JSON file, so an interrupted search resumes
(``resume=True``) without losing or repeating finished samples.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ..config.base import read_yaml
from ..config.compose import Layer, compose, set_layers
from ..config.train import TrainConfig
from ..errors import UserInputError
from ..paths import resolve_path, state_dir
from .config import NasConfig
from .proxy import holdout_split
from .sampler import sample_spec
from .tracking import NasResult  # noqa: F401  (defined beside summarize, which builds it)

__all__ = ["NasResult", "run_nas", "load_nas_config", "find_nas"]


def _nas_dir(cfg: NasConfig) -> Path:
    root = Path(cfg.storage) if cfg.storage else state_dir() / "nas"
    return (root / cfg.name).resolve()


def _base_config(cfg: NasConfig, config_dir: Path | None) -> tuple[TrainConfig, Path]:
    """The base training config with the search's ``overrides`` (composed and validated once)."""
    base_path = resolve_path(cfg.base, config_dir)
    base = compose(TrainConfig, Layer(read_yaml(base_path), str(base_path)), *set_layers(cfg.overrides, str(base_path)))
    if base.model.name != "spinenet" and not base.model.name.startswith("spinenet"):
        raise UserInputError(f"{base_path}: model.name: expected a spinenet model for NAS, got {base.model.name!r}")
    return base, base_path


def _proxy_config(cfg: NasConfig, base: TrainConfig, base_path: Path, spec_path: Path, exp_dir: Path, idx: int) -> TrainConfig:
    """``base`` with one sample's proxy task as an overlay (SpineNet §4): its spec, the held-out
    split, the proxy image size and epochs, the search's workers and trial storage."""
    train_ann = resolve_path(base.data.train.annotations, base_path.parent)
    images = str(resolve_path(base.data.train.images, base_path.parent))
    p_train, p_val = holdout_split(train_ann, exp_dir / "proxy_data", cfg.proxy.holdout_fraction, cfg.proxy.seed)
    train: dict = {"epochs": cfg.proxy.epochs, "eval_interval": cfg.proxy.epochs}
    if cfg.proxy.max_steps_per_epoch:
        train["max_steps_per_epoch"] = cfg.proxy.max_steps_per_epoch
    proxy = {"name": f"{cfg.name}-arch{idx:03d}", "model": {"name": "spinenet", "spec": str(spec_path)},
             "data": {"image_size": cfg.proxy.image_size, "train": {"annotations": str(p_train), "images": images},
                      "val": {"annotations": str(p_val), "images": images}},
             "train": train, "scaling": {"workers": cfg.workers}, "storage": str(exp_dir / "trials")}
    return compose(TrainConfig, Layer(base, str(base_path)), Layer(proxy, f"NAS {cfg.name}, sample {idx} (proxy task)"))


def _evaluate_sample(trial, cfg: NasConfig, base: TrainConfig, base_path: Path, exp_dir: Path, parent: str, base_spec):
    """Objective of one Optuna trial: sample → spec YAML → proxy training → reward."""
    import optuna
    from detmodels import ScaleSettings, SpecError, save_spec

    from ..train import run_training
    from .tracking import log_architecture

    try:
        spec = sample_spec(trial, base_spec, cfg.space, f"{cfg.name}-arch{trial.number:03d}")
    except SpecError as exc:
        trial.set_user_attr("rejected", str(exc))
        raise optuna.TrialPruned(f"invalid sample rejected: {exc}") from None
    scale = dataclasses.replace(spec.scale or ScaleSettings(), filter_size_scale=cfg.proxy.filter_size_scale)
    spec = dataclasses.replace(spec, scale=scale)
    (exp_dir / "specs").mkdir(parents=True, exist_ok=True)
    spec_path = save_spec(spec, exp_dir / "specs" / f"arch{trial.number:03d}.yaml")
    train_cfg = _proxy_config(cfg, base, base_path, spec_path, exp_dir, trial.number)
    tags = {"detflow.nas": cfg.name, "detflow.nas_trial": str(trial.number), "mlflow.runName": spec.name}
    result = run_training(train_cfg, parent_run_id=parent, tags=tags, progress=False)
    reward = float(result.metrics.get(cfg.metric, float("nan")))
    trial.set_user_attr("spec_path", str(spec_path))
    trial.set_user_attr("mlflow_run_id", result.run_id)
    log_architecture(result.run_id, spec, spec_path, cfg.proxy.image_size, train_cfg)
    return reward if not math.isnan(reward) else 0.0


def run_nas(cfg: NasConfig, *, config_dir: str | Path | None = None, resume: bool = False) -> NasResult:
    """Run (or resume) the search; returns the ranked architectures and the best spec path."""
    from detmodels import spinenet49_spec

    from ..tracking import remembered_parent_run
    from .tracking import summarize

    base, base_path = _base_config(cfg, Path(config_dir) if config_dir else None)
    exp_dir = _nas_dir(cfg)
    state = exp_dir / "detflow_nas.json"
    if state.exists() and not resume:
        raise UserInputError(f"NAS {cfg.name!r} already exists at {exp_dir}: resume it with "
                             f"`detflow nas --resume {cfg.name}` or choose another name")
    if resume and not state.exists():
        raise UserInputError(f"no NAS named {cfg.name!r} to resume under {exp_dir.parent}")
    exp_dir.mkdir(parents=True, exist_ok=True)
    parent = remembered_parent_run(state, cfg, kind="nas", resume=resume, extra={
        "config": cfg.model_dump(mode="json"), "config_dir": str(Path(config_dir or ".").resolve())})
    study = _study(cfg, exp_dir)
    remaining = cfg.num_samples - sum(t.state.is_finished() for t in study.trials)
    objective = lambda t: _evaluate_sample(t, cfg, base, base_path, exp_dir, parent, spinenet49_spec())  # noqa: E731
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, catch=(Exception,))
    return summarize(cfg, study, parent, exp_dir)


def _study(cfg: NasConfig, exp_dir: Path):
    """The Optuna study in SQL storage; trials a killed driver left RUNNING are marked FAIL."""
    import optuna

    url = cfg.search.storage or f"sqlite:///{exp_dir / 'optuna.db'}"
    sampler = (optuna.samplers.TPESampler(seed=cfg.search.seed) if cfg.search.name == "tpe"
               else optuna.samplers.RandomSampler(seed=cfg.search.seed))
    direction = "maximize" if cfg.mode == "max" else "minimize"
    study = optuna.create_study(study_name=cfg.name, storage=url, sampler=sampler, direction=direction,
                                load_if_exists=True)
    for t in study.trials:
        if t.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return study


def load_nas_config(path: str | Path, overrides: list[str] = ()) -> tuple[NasConfig, Path]:
    """Read a user's NAS YAML; the file and its ``base:`` must carry their ``kind`` (nas, train)."""
    from ..config.kinds import load_user_config, read_user_config

    cfg = load_user_config(NasConfig, path, overrides)
    read_user_config(resolve_path(cfg.base, Path(path).resolve().parent), "train")
    return cfg, Path(path).resolve().parent


def find_nas(name: str) -> tuple[NasConfig, Path]:
    state = state_dir() / "nas" / name / "detflow_nas.json"
    if not state.exists():
        raise UserInputError(f"no NAS named {name!r} under {state.parent.parent}: run `detflow nas FILE.yaml` first")
    from ..atomic import CorruptStateError, read_json_state

    hint = f"delete {state.parent} and start the search again with `detflow nas FILE.yaml`"
    data = read_json_state(state, "NAS state", hint)
    if not isinstance(data.get("config"), dict) or not isinstance(data.get("config_dir"), str):
        raise CorruptStateError(f"{state}: corrupt NAS state (no config / config_dir); {hint}")
    return NasConfig.model_validate(data["config"]), Path(data["config_dir"])
