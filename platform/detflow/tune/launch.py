"""What a sweep and a NAS share to launch trials on Ray Tune: the trial's environment, the epoch-based
ASHA scheduler, the Optuna SQL storage we own, the trainable's resources and the Tuner itself (a new
one, or the stored one when a killed driver's search resumes).

Every helper imports Ray lazily: configs and CLIs that import this module stay light.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class SearchDirs:
    """Where a search lives.

    Attributes:
        local: the driver's directory: state file, Optuna SQLite study, trial stats, results.
        experiment: the Tune experiment (``…/NAME``), which every node reads and writes: ``local`` for a
            local ``storage``, else ``storage/NAME`` (``s3://…``).
        trials: the storage of the trials' Ray Train runs (checkpoints): ``experiment/trials``, so a
            trial retried or resumed on another node continues from its last checkpoint.
    """

    local: Path
    experiment: str
    trials: str


def search_dirs(storage: str, name: str, kind: str) -> SearchDirs:
    """The directories of search ``name`` for a ``storage`` setting: empty (``$DETFLOW_HOME/<kind>``),
    a local directory, or an ``s3://bucket/prefix`` URI (then the driver's own files stay under
    ``$DETFLOW_HOME/<kind>/NAME``, and Tune and the trials write to the bucket)."""
    from .. import artifact_store
    from ..paths import state_dir

    if storage and artifact_store.is_uri(storage):
        experiment = artifact_store.join(storage, name)
        return SearchDirs((state_dir() / kind / name).resolve(), experiment, artifact_store.join(experiment, "trials"))
    local = ((Path(storage).expanduser() if storage else state_dir() / kind) / name).resolve()
    return SearchDirs(local, str(local), str(local / "trials"))

__all__ = ["SearchDirs", "search_dirs", "TRIAL_ENV", "trial_env", "EPOCH_KEY", "EPOCH_ATTR", "with_epochs_done", "epoch_scheduler",
           "optuna_storage", "trial_trainable", "make_tuner"]

# Where the trial's run lands: the driver's store, also when the trial actor's process did not
# inherit the driver's environment (a workflow step, a cluster started before the driver).
TRIAL_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY")


def trial_env() -> dict[str, str]:
    """The driver's settings a trial fills in where its node has none (a trial argument): no
    credentials, the tracking URI without a password, no ``DETFLOW_HOME`` (a node uses its own)."""
    from ..storage import public_env

    return public_env(names=TRIAL_ENV)


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


def epoch_scheduler(name: str, *, max_t: int, grace_period: int, reduction_factor: float):
    """``FIFOScheduler`` for ``name == "none"``, else ASHA (successive halving) on ``epochs_done``."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if name == "none":
        return FIFOScheduler()

    class EpochASHA(ASHAScheduler):
        """ASHA on ``epochs_done`` (see above); Tune pickles it with the tuner (by value)."""

        def on_trial_result(self, tune_controller, trial, result):  # noqa: ANN001, ANN201
            return super().on_trial_result(tune_controller, trial, with_epochs_done(result))

        def on_trial_complete(self, tune_controller, trial, result):  # noqa: ANN001, ANN201
            return super().on_trial_complete(tune_controller, trial, with_epochs_done(result))

    return EpochASHA(time_attr=EPOCH_ATTR, max_t=max_t, grace_period=grace_period,
                     reduction_factor=reduction_factor)


def optuna_storage(url: str | None, exp_dir: Path):
    """The Optuna study's SQL storage: ``url``, else SQLite ``optuna.db`` in the search directory."""
    import optuna

    return optuna.storages.RDBStorage(url or f"sqlite:///{Path(exp_dir) / 'optuna.db'}")


def trial_trainable(trial_fn: Callable[..., None], **params: Any):
    """``trial_fn`` with its keyword arguments bound (Ray's object store). The trial driver only waits
    on its Ray Train job: it holds no CPU (a token of memory instead, since Tune needs a non-empty
    request), so max_concurrent × workers × cpus fit the cluster exactly."""
    from ray import tune

    return tune.with_resources(tune.with_parameters(trial_fn, **params), {"memory": 64 * 1024**2})


def _keep_credentials_on_the_nodes() -> None:
    """Ray Tune copies the driver's ``AWS_*`` credentials into every trial actor's ``runtime_env``
    (Ray 2.60: ``ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE``), where Ray's state API and
    dashboard show them to anyone on the cluster. detflow's nodes read credentials from their own
    environment (a local Ray's workers inherit the driver's): the copy is switched off."""
    from ray.tune.execution import class_cache

    from ..redact import SECRET_ENV

    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - set(SECRET_ENV) - {"AWS_SECURITY_TOKEN"}


# Tune saves its experiment state (trial statuses, searcher) at most this often; "auto" waits >= 10 s,
# so a trial that ended in the seconds before a driver was killed would run again on resume.
EXPERIMENT_STATE_PERIOD_S = "1"


def _save_experiment_state_promptly() -> None:
    """Ray Tune reads its state period from the driver's environment (``TUNE_GLOBAL_CHECKPOINT_S``,
    Ray 2.60's ``TuneController``); a user's own setting wins."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", EXPERIMENT_STATE_PERIOD_S)


def make_tuner(trainable, *, dirs: SearchDirs, resume: bool, metric: str, mode: str, num_samples: int,
               search_alg, scheduler, max_retries: int, verbose: int = 1, param_space: dict | None = None):
    """A new Tuner writing its experiment to ``dirs.experiment``, or the stored one on resume
    (searcher, scheduler and trial states as the killed driver left them). A crashed trial is retried
    ``max_retries`` times with its config (Tune's ``FailureConfig``), then recorded as ERROR; the
    search always carries on. Per-trial attempts, errors and times go to ``dirs.local/stats/trial_stats.json``.
    The experiment state is saved every second (:data:`EXPERIMENT_STATE_PERIOD_S`): what a resumed
    driver treats as finished is what was saved."""
    from ray import tune

    from ..storage import ray_storage_from_env
    from .stats import TrialStatsCallback

    _keep_credentials_on_the_nodes()
    _save_experiment_state_promptly()
    # an s3:// experiment carries its endpoint, not the credentials: each node reads its own
    path, fs = ray_storage_from_env(dirs.experiment)
    if resume and tune.Tuner.can_restore(path, storage_filesystem=fs):
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True, storage_filesystem=fs)
    root, name = path.rstrip("/").rsplit("/", 1)
    return tune.Tuner(
        trainable, param_space=param_space or {},
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=num_samples,
                                    search_alg=search_alg, scheduler=scheduler),
        run_config=tune.RunConfig(
            name=name, storage_path=root, storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=max_retries), verbose=verbose,
            callbacks=[TrialStatsCallback(dirs.local)],
        ),
    )
