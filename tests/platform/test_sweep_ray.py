"""A real sweep on local Ray: every trial is a Ray Train run of rtmdet_tiny on tiny synthetic data,
ASHA stops weak trials early, MLflow nests trials under the sweep; a killed sweep driver resumes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def _sweep_yaml(tmp_path: Path, name: str, samples: int) -> Path:
    sweep = {
        "kind": "sweep", "name": name, "base": "base.yaml", "metric": "train/loss", "mode": "min",
        "space": {"train.optimizer.lr": {"loguniform": [1e-5, 0.3]},
                  "model.assigner.soft_center_alpha": {"uniform": [5.0, 20.0]}},
        "num_samples": samples, "max_concurrent": 2, "search": {"name": "tpe", "seed": 0},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 4},
        "resources": {"workers": 1, "cpus_per_worker": 1},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.fixture()
def sweep_env(tmp_path, monkeypatch, cli_env, tiny_rtmdet_base):
    """Synthetic data and ``base.yaml`` (tiny rtmdet) in ``tmp_path``; this process and the CLI
    subprocesses share its private DETFLOW_HOME."""
    from detflow.data import generate_synthetic

    generate_synthetic(tmp_path / "data", num_images=12, image_size=64, seed=0)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_rtmdet_base))
    for k in ("DETFLOW_HOME", "MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE"):
        monkeypatch.setenv(k, cli_env[k])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path, cli_env


def _run_cli(args, cwd, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "detflow", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_small_sweep_with_asha_and_mlflow_nesting(sweep_env):
    tmp_path, env = sweep_env
    path = _sweep_yaml(tmp_path, "asha", samples=4)
    r = _run_cli(["sweep", str(path), "--json"], tmp_path, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    trials = result["trials"]
    assert len(trials) == 4 and all(t["status"] in ("TERMINATED", "STOPPED_EARLY") for t in trials)
    assert any(t["status"] == "STOPPED_EARLY" for t in trials), trials  # ASHA cut at least one
    best = yaml.safe_load(Path(result["best_config"]).read_text())
    assert best["train"]["optimizer"]["lr"] == pytest.approx(result["best_values"]["train.optimizer.lr"])

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{result['parent_run_id']}'")
    assert len(children) == 4
    assert all(c.data.tags["detflow.sweep"] == "asha" and "lr=" in c.info.run_name for c in children)
    assert {t["mlflow_run_id"] for t in trials} == {c.info.run_id for c in children}
    status = {c.info.run_id: c for c in children}
    for t in trials:  # no child run left RUNNING; ASHA's stops are tagged
        run = status[t["mlflow_run_id"]]
        assert run.info.status == "FINISHED"
        assert ("detflow.stopped_early" in run.data.tags) == (t["status"] == "STOPPED_EARLY")
        assert t["attempts"] == 1 and t["start_to_first_report_s"] > t["first_epoch_s"] > 0
    parent = mlflow.get_run(result["parent_run_id"])
    assert "best/train/loss" in parent.data.metrics


def test_killed_sweep_driver_resumes_without_repeating_trials(sweep_env):
    tmp_path, env = sweep_env
    path = _sweep_yaml(tmp_path, "resumable", samples=4)
    proc = subprocess.Popen([sys.executable, "-m", "detflow", "sweep", str(path)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    exp = tmp_path / "home" / "sweeps" / "resumable"
    deadline = time.time() + 400
    finished = []
    while time.time() < deadline and len(finished) < 1:
        finished = [p for p in exp.glob("*/result.json") if p.read_text().count("\n") >= 2]
        time.sleep(2)
    assert finished, "no trial finished before the deadline"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    r = _run_cli(["sweep", "--resume", "resumable", "--json"], tmp_path, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    ids = [t["trial_id"] for t in result["trials"]]
    assert len(ids) == 4 and len(set(ids)) == 4  # none lost, none repeated
    import optuna

    study = optuna.load_study(study_name="resumable", storage=f"sqlite:///{exp / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4


def test_crashed_trial_is_retried_recorded_and_the_sweep_carries_on(sweep_env):
    """One grid point overflows the loss (a classification-loss weight beyond float32) so its training
    raises on the first step: Tune retries it once with the same config, records it as ERROR with the
    error text, its MLflow child run ends FAILED, and the two good trials finish and compete for best."""
    tmp_path, env = sweep_env
    sweep = {
        "kind": "sweep", "name": "crashy", "base": "base.yaml", "metric": "train/loss", "mode": "min",
        "overrides": ["checkpoint.max_failures=0"],  # no Ray Train worker restarts inside a trial
        "space": {"model.head.loss_cls_weight": {"choice": [1.0, 1.0e39, 2.0]}, "train.epochs": 1},
        "search": {"name": "grid"}, "scheduler": {"name": "none"}, "max_concurrent": 2, "max_retries": 1,
        "resources": {"workers": 1, "cpus_per_worker": 1},
    }
    (tmp_path / "crashy.yaml").write_text(yaml.safe_dump(sweep))
    r = _run_cli(["sweep", str(tmp_path / "crashy.yaml"), "--json"], tmp_path, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    trials = {t["model.head.loss_cls_weight"]: t for t in result["trials"]}
    assert sorted(trials) == [1.0, 2.0, 1.0e39]
    bad = trials[1.0e39]
    assert bad["status"] == "ERROR" and bad["attempts"] == 2 and bad["epochs"] == 0
    assert "non-finite loss" in bad["error"] and len(bad["errors"]) == 2
    assert all("non-finite loss" in e for e in bad["errors"])
    for good in (trials[1.0], trials[2.0]):
        assert good["status"] == "TERMINATED" and good["attempts"] == 1 and good["error"] is None
        assert good["epochs"] == 1 and good["metric"] > 0
        assert 0 <= good["first_epoch_s"] < good["start_to_first_report_s"]
        assert good["overhead_s"] == pytest.approx(good["start_to_first_report_s"] - good["first_epoch_s"])
    best = min((trials[1.0], trials[2.0]), key=lambda t: t["metric"])
    assert result["best_values"]["model.head.loss_cls_weight"] == best["model.head.loss_cls_weight"]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    failed = mlflow.get_run(bad["mlflow_run_id"])  # the retry continued the same child run
    assert failed.info.status == "FAILED" and "non-finite loss" in failed.data.tags["detflow.error"]
    assert {mlflow.get_run(t["mlflow_run_id"]).info.status for t in (trials[1.0], trials[2.0])} == {"FINISHED"}
    parent = mlflow.get_run(result["parent_run_id"])
    assert parent.data.metrics["tune/median_trial_overhead_s"] == pytest.approx(
        sorted([trials[1.0]["overhead_s"], trials[2.0]["overhead_s"]])[0] / 2
        + sorted([trials[1.0]["overhead_s"], trials[2.0]["overhead_s"]])[1] / 2)
    assert parent.data.tags["detflow.failed_trials"] == "1"
