"""Run a sweep on Ray Tune: every trial is a real ``run_training`` (Ray Train inside the trial),
reporting each epoch so ASHA can stop it; Optuna TPE through ``OptunaSearch`` with the study in
SQL storage we own, so an interrupted sweep resumes with searcher and scheduler state intact.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..config.base import read_yaml
from ..config.compose import Layer, compose
from ..config.train import TrainConfig
from ..errors import UserInputError
from ..paths import resolve_path, state_dir
from .config import SweepConfig
from .launch import SearchDirs, epoch_scheduler, make_tuner, optuna_storage, search_dirs, trial_env, trial_trainable
from .results import SweepResult, collect_results, log_sweep_summary
from .results import base_epochs as _base_epochs
from .space import apply_trial, space_model_names, to_tune_space, trial_label, validate_space_paths

__all__ = ["run_sweep", "sweep_dir"]

_STATE_FILE = "detflow_sweep.json"


def sweep_dirs(cfg: SweepConfig) -> SearchDirs:
    """A sweep's directories (:func:`.launch.search_dirs`): the driver's ``$DETFLOW_HOME/sweeps/NAME``
    or ``storage/NAME``, and the Tune experiment and trial runs, in ``storage`` (local or ``s3://``)."""
    return search_dirs(cfg.storage, cfg.name, "sweeps")


def sweep_dir(cfg: SweepConfig) -> Path:
    """The driver's directory of a sweep (state file, Optuna study, trial stats, results)."""
    return sweep_dirs(cfg).local


def _validate(cfg: SweepConfig, base: dict, source: str) -> TrainConfig:
    """Fail before anything runs (before Ray starts): the base with the sweep's overrides must
    validate, every space key must be a field of the model's family, and every range's extremes must
    validate as trial values (TrainConfig's own rules, through :func:`compose`). Returns the
    composed base every trial starts from."""
    base_cfg = apply_trial(base, cfg.overrides, {}, source)
    sweep = f"sweep {cfg.name!r}"
    validate_space_paths(cfg.space, sweep, space_model_names(cfg.space, base_cfg.model.name))
    for path, spec in cfg.space.items():
        probes = {"uniform": spec.uniform, "loguniform": spec.loguniform, "int": spec.int,
                  "choice": spec.choice, "fixed": [spec.fixed]}[spec.kind]
        for value in probes:
            apply_trial(Layer(base_cfg, source), [], {path: value}, f"{sweep}: space.{path}={value!r}")
    return base_cfg


def _trial_env() -> dict[str, str]:
    """The sweep driver's settings a trial fills in where its node has none (see :func:`.launch.trial_env`)."""
    return trial_env()


def _public_sweep(cfg: SweepConfig) -> dict:
    """The sweep config as trials receive it: the Optuna storage URL (used by the driver's searcher
    only) without its password."""
    from ..storage import strip_credentials

    data = cfg.model_dump(mode="json")
    if data.get("search", {}).get("storage"):
        data["search"]["storage"] = strip_credentials(data["search"]["storage"])
    return data


def _write_sweep_record(exp_dir: Path, cfg: SweepConfig, config_dir: str | Path | None) -> Path:
    """``sweep.json`` (what ``--resume NAME`` reads back): the config as trials see it, i.e. the Optuna
    storage URL without its password (on resume the driver's ``PGPASSWORD`` / ``.pgpass`` supply it)."""
    from ..atomic import atomic_write

    path = exp_dir / "sweep.json"
    atomic_write(path, json.dumps({"config": _public_sweep(cfg), "config_dir": str(Path(config_dir or ".").resolve())}))
    return path


def _trial_fn(config: dict, *, base: TrainConfig, base_dir: str, sweep: dict, parent_run_id: str, trials_dir: str,
              env: dict[str, str] | None = None) -> None:
    """Body of one Tune trial: a full ``run_training`` of ``base`` (the composed, validated base
    config) with the trial's sampled values and its name, storage and resources as overlays."""
    from ray import tune

    from ..storage import apply_public_env

    apply_public_env(env or {})  # the node's own settings win

    from ..train import run_training

    cfg = SweepConfig.model_validate(sweep)
    trial_id = tune.get_context().get_trial_id()
    values = {k: config[k] for k in cfg.space}
    label = trial_label(values, cfg.space)
    res = cfg.resources
    settings = {"name": f"{cfg.name}-{trial_id}", "storage": trials_dir, "scaling": {
        "workers": res.workers, "cpus_per_worker": res.cpus_per_worker, "gpus_per_worker": res.gpus_per_worker}}
    train_cfg = compose(TrainConfig, Layer(base, f"sweep {cfg.name} base"),
                        Layer(values, f"sweep {cfg.name}, trial {trial_id}"),
                        Layer(settings, f"sweep {cfg.name}, trial {trial_id} (name, storage, resources)"))
    tags = {"detflow.sweep": cfg.name, "detflow.trial_id": trial_id, "detflow.trial_label": label,
            "mlflow.runName": label, "mlflow.source.name": f"detflow sweep {cfg.name}"}
    run_training(train_cfg, config_dir=base_dir, parent_run_id=parent_run_id, tags=tags,
                 progress=False, tune_report=True, resume=True)


def _searcher(cfg: SweepConfig, exp_dir: Path, tune_space: dict):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if cfg.search.name in ("random", "grid"):
        return BasicVariantGenerator(max_concurrent=cfg.max_concurrent, random_state=cfg.search.seed)
    from ray.tune.search.optuna import OptunaSearch

    search = OptunaSearch(metric=cfg.metric, mode=cfg.mode, study_name=cfg.name,
                          storage=optuna_storage(cfg.search.storage, exp_dir), seed=cfg.search.seed)
    return ConcurrencyLimiter(search, max_concurrent=cfg.max_concurrent)


def _scheduler(cfg: SweepConfig, base_epochs: int):
    """FIFO, or ASHA on the epochs a trial trained (:func:`.launch.epoch_scheduler`)."""
    return epoch_scheduler(cfg.scheduler.name, max_t=cfg.scheduler.max_epochs or base_epochs,
                           grace_period=cfg.scheduler.grace_period, reduction_factor=cfg.scheduler.reduction_factor)


def run_sweep(cfg: SweepConfig, *, config_dir: str | Path | None = None, resume: bool = False,
              ray_address: str | None = None, verbose: int = 1) -> SweepResult:
    """Run (or resume) the sweep ``cfg``; returns the trial table, best config and parent run id.
    ``verbose``: Ray Tune's console status (0 silent, e.g. for ``--json``; 1 trial tables)."""
    base_path = resolve_path(cfg.base, config_dir)
    base = read_yaml(base_path) or {}
    source = str(base_path)
    base_cfg = _validate(cfg, base, source)
    dirs = sweep_dirs(cfg)
    exp_dir = dirs.local
    if exp_dir.exists() and not resume and (exp_dir / _STATE_FILE).exists():
        raise UserInputError(f"sweep {cfg.name!r} already exists at {exp_dir}: resume it with "
                             f"`detflow sweep --resume {cfg.name}` or choose another name")
    if resume and not (exp_dir / _STATE_FILE).exists():
        raise UserInputError(f"no sweep named {cfg.name!r} to resume under {exp_dir.parent}")
    from ..ray_env import init_ray

    init_ray(ray_address, log_to_driver=False)
    from ..tracking import remembered_parent_run

    parent = remembered_parent_run(exp_dir / _STATE_FILE, cfg, kind="sweep", resume=resume)
    if not resume:
        _write_sweep_record(exp_dir, cfg, config_dir)
    trainable = trial_trainable(
        _trial_fn, base=base_cfg, base_dir=str(base_path.parent), sweep=_public_sweep(cfg),
        parent_run_id=parent, trials_dir=dirs.trials, env=_trial_env())
    tuner = _make_tuner(cfg, dirs, trainable, base_cfg, resume, verbose)
    started = time.time()
    grid = tuner.fit()
    result = collect_results(cfg, grid, parent, exp_dir, base, source, wall_time_s=time.time() - started)
    log_sweep_summary(cfg, result, exp_dir)
    return result


def _make_tuner(cfg: SweepConfig, dirs: SearchDirs, trainable, base: TrainConfig, resume: bool, verbose: int = 1):
    """A new Tuner, or the stored one on resume (:func:`.launch.make_tuner`)."""
    tune_space = to_tune_space(cfg.space, cfg.search.name)
    # the searcher limits concurrency itself (ConcurrencyLimiter / BasicVariantGenerator)
    return make_tuner(trainable, dirs=dirs, resume=resume, metric=cfg.metric, mode=cfg.mode,
                      num_samples=cfg.num_samples if cfg.search.name != "grid" else 1,
                      search_alg=_searcher(cfg, dirs.local, tune_space), scheduler=_scheduler(cfg, _base_epochs(cfg, base)),
                      max_retries=cfg.max_retries, verbose=verbose, param_space=tune_space)


def load_sweep_config(path: str | Path, overrides: list[str] = ()) -> tuple[SweepConfig, Path]:
    """Read a user's sweep YAML (with ``--set`` overrides); returns the config and its directory. The
    file and its ``base:`` must carry their ``kind`` (sweep, train)."""
    from ..config.kinds import load_user_config, read_user_config

    cfg = load_user_config(SweepConfig, path, overrides)
    read_user_config(resolve_path(cfg.base, Path(path).resolve().parent), "train")
    return cfg, Path(path).resolve().parent


def find_sweep(name: str) -> tuple[SweepConfig, Path]:
    """The stored config of an existing sweep named ``name`` (for ``--resume NAME``)."""
    root = state_dir() / "sweeps" / name
    stored = root / "sweep.json"
    if not stored.exists():
        raise UserInputError(f"no sweep named {name!r} under {root.parent}: run `detflow sweep FILE.yaml` first")
    from ..atomic import CorruptStateError, read_json_state

    hint = f"delete {root} and start the sweep again with `detflow sweep FILE.yaml`"
    data: dict[str, Any] = read_json_state(stored, "sweep state", hint)
    if not isinstance(data.get("config"), dict) or not isinstance(data.get("config_dir"), str):
        raise CorruptStateError(f"{stored}: corrupt sweep state (no config / config_dir); {hint}")
    return SweepConfig.model_validate(data["config"]), Path(data["config_dir"])
