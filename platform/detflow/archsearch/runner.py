"""SpineNet architecture search on Ray Tune (SpineNet §3–4): every sampled spec is a Tune trial running
a real proxy training on Ray Train, ``max_concurrent_trials`` at once; Optuna (TPE, NSGA-II or random)
proposes specs against the accuracy ``metric`` and, optionally, a cost; ASHA stops weak proxies.

State: the Tune experiment and the Optuna SQL study live in the NAS directory, so a search whose
driver was killed resumes (``detflow nas --resume NAME``) without repeating finished trials; a crashed
trial is retried ``max_retries`` times, then recorded as ERROR while the search carries on.

>>> result = run_nas(cfg, config_dir=Path("workflows/nas"))      # doctest: +SKIP
>>> result.best_config_path                                      # doctest: +SKIP
'.../nas/spinenet-proxy/best_train.yaml'   # detflow train runs it as is (proxy → full scale)
"""
from __future__ import annotations

import time
from pathlib import Path

from ..config.base import read_yaml
from ..config.compose import Layer, compose, set_layers
from ..config.train import TrainConfig
from ..errors import UserInputError
from ..paths import resolve_path, state_dir
from ..tune.launch import SearchDirs
from .config import NasConfig
from .tracking import NasResult

__all__ = ["NasResult", "run_nas", "load_nas_config", "find_nas", "nas_dir"]

STATE_FILE = "detflow_nas.json"


def nas_dirs(cfg: NasConfig) -> SearchDirs:
    """A search's directories (:func:`~detflow.tune.launch.search_dirs`): the driver's
    (``$DETFLOW_HOME/nas/NAME`` or ``storage/NAME``: state, Optuna study, specs, proxy split,
    results) and the Tune experiment and trial runs, in ``storage`` (local or ``s3://``)."""
    from ..tune.launch import search_dirs

    return search_dirs(cfg.storage, cfg.name, "nas")


def nas_dir(cfg: NasConfig) -> Path:
    """The driver's directory of a search."""
    return nas_dirs(cfg).local


def _base_config(cfg: NasConfig, config_dir: Path | None) -> tuple[TrainConfig, Path]:
    """The base training config with the search's ``overrides`` (composed and validated once)."""
    base_path = resolve_path(cfg.base, config_dir)
    base = compose(TrainConfig, Layer(read_yaml(base_path), str(base_path)), *set_layers(cfg.overrides, str(base_path)))
    if base.model.name != "spinenet" and not base.model.name.startswith("spinenet"):
        raise UserInputError(f"{base_path}: model.name: expected a spinenet model for NAS, got {base.model.name!r}")
    return base, base_path


def _proxy_data(cfg: NasConfig, base: TrainConfig, base_path: Path, exp_dir: Path) -> dict:
    """The proxy task's held-out split of the base's training annotations (same seed, same split)."""
    from .proxy import holdout_split

    train_ann = resolve_path(base.data.train.annotations, base_path.parent)
    p_train, p_val = holdout_split(train_ann, exp_dir / "proxy_data", cfg.proxy.holdout_fraction, cfg.proxy.seed)
    return {"train": str(p_train), "val": str(p_val),
            "images": str(resolve_path(base.data.train.images, base_path.parent))}


def _check_state(cfg: NasConfig, exp_dir: Path, resume: bool) -> None:
    state = exp_dir / STATE_FILE
    if state.exists() and not resume:
        raise UserInputError(f"NAS {cfg.name!r} already exists at {exp_dir}: resume it with "
                             f"`detflow nas --resume {cfg.name}` or choose another name")
    if resume and not state.exists():
        raise UserInputError(f"no NAS named {cfg.name!r} to resume under {exp_dir.parent}")


def _public_nas(cfg: NasConfig) -> dict:
    """The config as trials and the state file see it: the Optuna storage URL without its password."""
    from ..storage import strip_credentials

    data = cfg.model_dump(mode="json")
    if data["search"].get("storage"):
        data["search"]["storage"] = strip_credentials(data["search"]["storage"])
    return data


def run_nas(cfg: NasConfig, *, config_dir: str | Path | None = None, resume: bool = False,
            ray_address: str | None = None, verbose: int = 0) -> NasResult:
    """Run (or resume) the search on Ray Tune; returns the ranked trials, the Pareto front, the
    winner and its transfer config (see :class:`~detflow.archsearch.tracking.NasResult`)."""
    from detmodels import spec_to_dict, spinenet49_spec

    from ..ray_env import init_ray
    from ..tracking import remembered_parent_run
    from ..tune.launch import make_tuner, trial_env, trial_trainable
    from .search import nas_scheduler, nas_searcher
    from .tracking import summarize
    from .trial import nas_trial_fn

    base, base_path = _base_config(cfg, Path(config_dir) if config_dir else None)
    dirs = nas_dirs(cfg)
    exp_dir = dirs.local
    _check_state(cfg, exp_dir, resume)
    exp_dir.mkdir(parents=True, exist_ok=True)
    init_ray(ray_address, log_to_driver=False)
    parent = remembered_parent_run(exp_dir / STATE_FILE, cfg, kind="nas", resume=resume, extra={
        "config": _public_nas(cfg), "config_dir": str(Path(config_dir or ".").resolve())})
    trainable = trial_trainable(
        nas_trial_fn, base=base, base_dir=str(base_path.parent), nas=_public_nas(cfg), parent_run_id=parent,
        exp_dir=str(exp_dir), trials_dir=dirs.trials, proxy_data=_proxy_data(cfg, base, base_path, exp_dir), env=trial_env())
    tuner = make_tuner(trainable, dirs=dirs, resume=resume, metric=cfg.metric, mode=cfg.mode,
                       num_samples=cfg.num_samples, search_alg=nas_searcher(cfg, exp_dir, spec_to_dict(spinenet49_spec())),
                       scheduler=nas_scheduler(cfg), max_retries=cfg.max_retries, verbose=verbose)
    started = time.time()
    grid = tuner.fit()
    return summarize(cfg, grid, parent, exp_dir, base, base_path, wall_time_s=time.time() - started)


def load_nas_config(path: str | Path, overrides: list[str] = ()) -> tuple[NasConfig, Path]:
    """Read a user's NAS YAML; the file and its ``base:`` must carry their ``kind`` (nas, train)."""
    from ..config.kinds import load_user_config, read_user_config

    cfg = load_user_config(NasConfig, path, overrides)
    read_user_config(resolve_path(cfg.base, Path(path).resolve().parent), "train")
    return cfg, Path(path).resolve().parent


def find_nas(name: str) -> tuple[NasConfig, Path]:
    """The stored config of an existing search named ``name`` (for ``--resume NAME``)."""
    state = state_dir() / "nas" / name / STATE_FILE
    if not state.exists():
        raise UserInputError(f"no NAS named {name!r} under {state.parent.parent}: run `detflow nas FILE.yaml` first")
    from ..atomic import CorruptStateError, read_json_state

    hint = f"delete {state.parent} and start the search again with `detflow nas FILE.yaml`"
    data = read_json_state(state, "NAS state", hint)
    if not isinstance(data.get("config"), dict) or not isinstance(data.get("config_dir"), str):
        raise CorruptStateError(f"{state}: corrupt NAS state (no config / config_dir); {hint}")
    return NasConfig.model_validate(data["config"]), Path(data["config_dir"])
