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
from .results import SweepResult, collect_results, log_sweep_summary
from .results import base_epochs as _base_epochs
from .space import apply_trial, space_model_names, to_tune_space, trial_label, validate_space_paths

__all__ = ["run_sweep", "sweep_dir"]

_STATE_FILE = "detflow_sweep.json"


def sweep_dir(cfg: SweepConfig) -> Path:
    """Directory of a sweep's Tune experiment (``storage/NAME``)."""
    root = Path(cfg.storage) if cfg.storage and "://" not in cfg.storage else state_dir() / "sweeps"
    return (root / cfg.name).resolve()


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


# Where the trial's run lands: the sweep driver's store, also when the trial actor's process did not
# inherit the driver's environment (a workflow step, a cluster started before the driver).
_TRIAL_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY")


def _trial_env() -> dict[str, str]:
    """The sweep driver's settings a trial fills in where its node has none (a trial argument): no
    credentials, the tracking URI without a password, no ``DETFLOW_HOME`` (a node uses its own)."""
    from ..storage import public_env

    return public_env(names=_TRIAL_ENV)


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
            "mlflow.runName": label}
    run_training(train_cfg, config_dir=base_dir, parent_run_id=parent_run_id, tags=tags,
                 progress=False, tune_report=True, resume=True)


def _searcher(cfg: SweepConfig, exp_dir: Path, tune_space: dict):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if cfg.search.name in ("random", "grid"):
        return BasicVariantGenerator(max_concurrent=cfg.max_concurrent, random_state=cfg.search.seed)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    url = cfg.search.storage or f"sqlite:///{exp_dir / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url)
    search = OptunaSearch(metric=cfg.metric, mode=cfg.mode, study_name=cfg.name, storage=storage,
                          seed=cfg.search.seed)
    return ConcurrencyLimiter(search, max_concurrent=cfg.max_concurrent)


# ASHA's rungs count epochs trained. Tune's ``training_iteration`` counts the reports of the trial's
# current process: it restarts at 1 when a trial is restored, while its Ray Train run continues from
# its last checkpoint's epoch. The workers report that epoch (``epoch``, 0-based) every epoch; the
# scheduler runs on ``epochs_done`` = ``epoch`` + 1, which a restored trial continues.
EPOCH_KEY = "epoch"
EPOCH_ATTR = "epochs_done"


def with_epochs_done(result: dict) -> dict:
    """``result`` (a trial's report) with ``epochs_done``: the reported ``epoch`` + 1; in place."""
    if isinstance(result, dict) and EPOCH_KEY in result and EPOCH_ATTR not in result:
        result[EPOCH_ATTR] = int(result[EPOCH_KEY]) + 1
    return result


def _scheduler(cfg: SweepConfig, base_epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler.name == "none":
        return FIFOScheduler()

    class EpochASHA(ASHAScheduler):
        """ASHA on ``epochs_done`` (see above); Tune pickles it with the tuner (by value)."""

        def on_trial_result(self, tune_controller, trial, result):  # noqa: ANN001, ANN201
            return super().on_trial_result(tune_controller, trial, with_epochs_done(result))

        def on_trial_complete(self, tune_controller, trial, result):  # noqa: ANN001, ANN201
            return super().on_trial_complete(tune_controller, trial, with_epochs_done(result))

    return EpochASHA(
        time_attr=EPOCH_ATTR, max_t=cfg.scheduler.max_epochs or base_epochs,
        grace_period=cfg.scheduler.grace_period, reduction_factor=cfg.scheduler.reduction_factor,
    )


def run_sweep(cfg: SweepConfig, *, config_dir: str | Path | None = None, resume: bool = False,
              ray_address: str | None = None, verbose: int = 1) -> SweepResult:
    """Run (or resume) the sweep ``cfg``; returns the trial table, best config and parent run id.
    ``verbose``: Ray Tune's console status (0 silent, e.g. for ``--json``; 1 trial tables)."""
    from ray import tune

    base_path = resolve_path(cfg.base, config_dir)
    base = read_yaml(base_path) or {}
    source = str(base_path)
    base_cfg = _validate(cfg, base, source)
    exp_dir = sweep_dir(cfg)
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
    trainable = tune.with_parameters(
        _trial_fn, base=base_cfg, base_dir=str(base_path.parent), sweep=_public_sweep(cfg),
        parent_run_id=parent, trials_dir=str(exp_dir / "trials"),
        env=_trial_env())
    # The trial driver only waits on its Ray Train job: it holds no CPU (a token of memory instead,
    # since Tune needs a non-empty request), so max_concurrent × workers × cpus fit the cluster exactly.
    trainable = tune.with_resources(trainable, {"memory": 64 * 1024**2})
    tuner = _make_tuner(cfg, exp_dir, trainable, base_cfg, resume, verbose)
    started = time.time()
    grid = tuner.fit()
    result = collect_results(cfg, grid, parent, exp_dir, base, source, wall_time_s=time.time() - started)
    log_sweep_summary(cfg, result, exp_dir)
    return result


def _make_tuner(cfg: SweepConfig, exp_dir: Path, trainable, base: TrainConfig, resume: bool, verbose: int = 1):
    """A new Tuner, or the stored one on resume. A crashed trial is retried ``cfg.max_retries`` times
    with its config (Tune's ``FailureConfig``), then recorded as ERROR; the sweep always carries on."""
    from ray import tune

    from .stats import TrialStatsCallback

    if resume and tune.Tuner.can_restore(str(exp_dir)):
        return tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True)
    tune_space = to_tune_space(cfg.space, cfg.search.name)
    return tune.Tuner(
        trainable,
        param_space=tune_space,
        tune_config=tune.TuneConfig(
            metric=cfg.metric, mode=cfg.mode, num_samples=cfg.num_samples if cfg.search.name != "grid" else 1,
            # the searcher limits concurrency itself (ConcurrencyLimiter / BasicVariantGenerator)
            search_alg=_searcher(cfg, exp_dir, tune_space), scheduler=_scheduler(cfg, _base_epochs(cfg, base)),
        ),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=str(exp_dir.parent),
            failure_config=tune.FailureConfig(max_failures=cfg.max_retries), verbose=verbose,
            callbacks=[TrialStatsCallback(exp_dir)],
        ),
    )


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
