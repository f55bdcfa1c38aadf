"""Search state that must survive restores and shared storage, checked without running a sweep:
ASHA runs on the epoch counter the trials report (not Tune's ``training_iteration``, which restarts
when a trial is restored), and a workflow's sweep / NAS study is named after its run as well as its step."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from detflow.tune.config import SweepConfig  # noqa: E402
from detflow.tune.launch import EPOCH_ATTR, with_epochs_done  # noqa: E402
from detflow.tune.runner import _scheduler  # noqa: E402
from detflow.workflows.context import StepContext  # noqa: E402
from detflow.workflows.schema import NASParams, SweepParams  # noqa: E402
from detflow.workflows.steps import search as search_steps  # noqa: E402

METRIC = "val/bbox_mAP"


def _sweep_cfg(**scheduler) -> SweepConfig:
    return SweepConfig(name="s", base="base.yaml", space={"train.lr": {"uniform": [0.001, 0.01]}},
                       scheduler={"grace_period": 1, "reduction_factor": 2, **scheduler})


# ------------------------------------------------------------------------------------------ ASHA
def test_asha_runs_on_the_reported_epoch_counter():
    sched = _scheduler(_sweep_cfg(max_epochs=4), base_epochs=4)
    assert sched._time_attr == EPOCH_ATTR == "epochs_done" and sched._max_t == 4
    assert type(_scheduler(_sweep_cfg(name="none"), 4)).__name__ == "FIFOScheduler"
    assert with_epochs_done({"epoch": 2, "training_iteration": 1})[EPOCH_ATTR] == 3
    assert EPOCH_ATTR not in with_epochs_done({"training_iteration": 1})  # e.g. Tune's final "done" result


def test_a_restored_trial_reaches_the_rung_of_its_epoch():
    """After a restore Tune's ``training_iteration`` starts again at 1 while training continues at the
    checkpoint's epoch: the result of the 3rd epoch must count at the rung of 2 epochs, not again at 1."""
    sched = _scheduler(_sweep_cfg(max_epochs=4), base_epochs=4)
    sched.set_search_properties(METRIC, "max")
    trial = SimpleNamespace(trial_id="t0")
    sched.on_trial_add(None, trial)
    sched.on_trial_result(None, trial, {"epoch": 0, "training_iteration": 1, METRIC: 0.1})
    # the trial's actor died after epoch 2; restored, its Ray Train run resumes at epoch index 2
    sched.on_trial_result(None, trial, {"epoch": 2, "training_iteration": 1, METRIC: 0.3})
    rungs = {milestone: recorded for milestone, recorded in sched._brackets[0]._rungs}
    assert rungs[1] == {"t0": 0.1} and rungs[2] == {"t0": 0.3}


def test_scheduler_survives_the_tuner_pickle():
    from ray import cloudpickle

    sched = _scheduler(_sweep_cfg(max_epochs=4), base_epochs=4)
    again = cloudpickle.loads(cloudpickle.dumps(sched))  # Tune stores it in tuner.pkl for --resume
    again.set_search_properties(METRIC, "max")
    trial = SimpleNamespace(trial_id="t1")
    again.on_trial_add(None, trial)
    again.on_trial_result(None, trial, {"epoch": 1, METRIC: 0.5})
    assert {m: r for m, r in again._brackets[0]._rungs}[2] == {"t1": 0.5}


def test_each_epoch_report_carries_the_epoch_counter(monkeypatch):
    """What a trial reports to Tune is rank 0's ``ray.train.report`` metrics (``TuneReportCallback``):
    they hold the epoch index, which continues after a restore, and so the scheduler's counter."""
    import ray.train

    from detflow.train import worker

    reports = []
    monkeypatch.setattr(ray.train, "report", lambda metrics, **kw: reports.append(dict(metrics)))
    monkeypatch.setattr(worker, "reduce_stats", lambda summary: dict(summary))
    run = object.__new__(worker._WorkerRun)
    run.cfg = SimpleNamespace(train=SimpleNamespace(epochs=5), checkpoint=SimpleNamespace(every=1))
    run.loop = SimpleNamespace(train_epoch=lambda loader, epoch: SimpleNamespace(summary=lambda w: {"train/loss": 1.0}))
    run.data = SimpleNamespace(train_loader=lambda epoch: [])
    run.rank, run.world, run.history, run.best_dir = 1, 2, [], None
    run.logger = SimpleNamespace(log=lambda *a: None)
    run._evaluate = lambda epoch, last, tmp: {}
    run.stopper = None  # no train.patience
    run.run_epoch(3)  # the first epoch a restored trial trains when its checkpoint was of epoch index 2
    assert reports and reports[0]["epoch"] == 3 and with_epochs_done(reports[0])[EPOCH_ATTR] == 4


# ---------------------------------------------------------------------------------- study names
def _ctx(tmp_path: Path, run_id: str, step_id: str) -> StepContext:
    return StepContext(run_id=run_id, step_id=step_id, kind="sweep", workflow="wf",
                       storage=str(tmp_path / "store" / run_id / step_id), scratch=str(tmp_path / "scratch" / run_id))


def _train_config():
    from detflow.config import TrainConfig, parse_config

    return parse_config(TrainConfig, {"model": {"name": "spinenet_49s"},
                                      "data": {"train": {"annotations": "t.json", "images": "img"}}}, "base.yaml")


def test_search_name_includes_the_run_id(tmp_path):
    names = {search_steps.search_name(_ctx(tmp_path, run, "sweep")) for run in ("wf-20260101-a1b2", "wf-20260101-c3d4")}
    assert names == {"wf-20260101-a1b2.sweep", "wf-20260101-c3d4.sweep"}
    assert search_steps.search_name(_ctx(tmp_path, "_my run/1", "nas")) == "r_my-run-1.nas"  # a valid search name


def test_two_runs_sharing_optuna_storage_get_their_own_sweep_studies(tmp_path, monkeypatch):
    import optuna

    from detflow.tune import runner as tune_runner
    from detflow.tune.space import to_tune_space

    shared = f"sqlite:///{tmp_path / 'shared-optuna.db'}"
    built = []

    def fake_sweep(cfg, **kw):
        built.append(cfg)
        return SimpleNamespace(best_config_path="", best_values={}, best_metric=None, parent_run_id=None)

    monkeypatch.setattr(search_steps, "step_base_config", lambda params, ctx: _train_config())
    monkeypatch.setattr(tune_runner, "run_sweep", fake_sweep)
    params = SweepParams(space={"train.lr": {"uniform": [0.001, 0.01]}}, search={"name": "tpe", "storage": shared})
    for run_id in ("wf-run-1", "wf-run-2"):
        search_steps.run_sweep(params, _ctx(tmp_path, run_id, "sweep"))
    assert [cfg.name for cfg in built] == ["wf-run-1.sweep", "wf-run-2.sweep"]
    for cfg in built:  # the searcher the sweep would build creates its study in the shared storage
        searcher = tune_runner._searcher(cfg, tmp_path, to_tune_space(cfg.space, cfg.search.name))
        searcher.set_search_properties(cfg.metric, cfg.mode, to_tune_space(cfg.space, cfg.search.name))
    assert sorted(optuna.get_all_study_names(shared)) == ["wf-run-1.sweep", "wf-run-2.sweep"]


def test_two_runs_sharing_optuna_storage_get_their_own_nas_studies(tmp_path, monkeypatch):
    import optuna
    from detmodels import spec_to_dict, spinenet49_spec

    import detflow.archsearch as nas_pkg
    from detflow.archsearch.search import nas_searcher

    shared = f"sqlite:///{tmp_path / 'shared-nas.db'}"
    built = []

    class Stop(Exception):
        pass

    def fake_nas(cfg, **kw):
        built.append(cfg)
        raise Stop

    monkeypatch.setattr(search_steps, "step_base_config", lambda params, ctx: _train_config())
    monkeypatch.setattr(nas_pkg, "run_nas", fake_nas)
    params = NASParams(search={"name": "random", "storage": shared})
    for run_id in ("wf-run-1", "wf-run-2"):
        with pytest.raises(Stop):
            search_steps.run_nas(params, _ctx(tmp_path, run_id, "nas"))
    for cfg in built:  # the searcher the search would build creates its study in the shared storage
        nas_searcher(cfg, tmp_path, spec_to_dict(spinenet49_spec()))
    assert sorted(optuna.get_all_study_names(shared)) == ["wf-run-1.nas", "wf-run-2.nas"]
