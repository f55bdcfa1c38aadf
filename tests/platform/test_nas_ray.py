"""A tiny SpineNet architecture search on local Ray Tune (CPU, 64 px, spinenet at 0.25 feature scale):
two proxy trainings run at once, Optuna proposes specs against AP and ONNX latency, ASHA cuts proxies,
every trial is a child MLflow run with its spec, the Pareto front and the winner's transfer config come
out; a killed driver resumes without repeating finished trials; crashed trials are retried and recorded."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from detflow.tune.stats import STATS_FILE

pytestmark = pytest.mark.slow

BASE = {
    "kind": "train",
    "name": "nasbase",
    "model": {"name": "spinenet_49s"},
    "data": {"train": {"annotations": "data/train.json", "images": "data/images"},
             "val": {"annotations": "data/val.json", "images": "data/images"}, "image_size": 64},
    "recipe": {"name": "retinanet"},
    "train": {"epochs": 1, "batch_size": 2, "schedule": {"warmup_iters": 1}},
    "scaling": {"workers": 1, "cpus_per_worker": 1},
}
PROXY = {"filter_size_scale": 0.25, "image_size": 64, "epochs": 2, "holdout_fraction": 0.3, "max_steps_per_epoch": 2}


@pytest.fixture()
def nas_env(tmp_path):
    from detflow.data import generate_synthetic

    generate_synthetic(tmp_path / "data", num_images=12, image_size=64, seed=0)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    env = {**os.environ, "DETFLOW_HOME": str(tmp_path / "home"), "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return tmp_path, env


def _nas_yaml(tmp_path: Path, name: str, **fields) -> Path:
    nas = {"kind": "nas", "name": name, "base": "base.yaml", "metric": "val/bbox_mAP", "num_samples": 4,
           "max_concurrent_trials": 2, "search": {"name": "tpe", "seed": 0},
           "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
           "resources": {"workers": 1, "cpus_per_worker": 1}, "proxy": PROXY, **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(nas))
    return path


def _cli(args, cwd, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "detflow", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _mlflow(tmp_path: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    return mlflow


def _ended_trials(exp: Path) -> int:
    try:
        stats = json.loads((exp / STATS_FILE).read_text())
    except (OSError, ValueError):
        return 0
    return sum("ended_at" in s for s in stats.values())


def _saved_finished(exp: Path) -> set[str]:
    """Trial ids Tune's newest saved experiment state records as TERMINATED (what a resume reads;
    the driver saves it every second, so a trial that just ended is there a second later)."""
    states = sorted(exp.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    try:
        trials = json.loads(states[-1].read_text())["trial_data"] if states else []
    except (OSError, ValueError, KeyError):
        return set()
    saved = [json.loads(t[0]) if isinstance(t[0], str) else t[0] for t in trials]
    return {t["trial_id"] for t in saved if t.get("status") == "TERMINATED"}


def _overlap(a: dict, b: dict) -> bool:
    return a["started_at"] < b["ended_at"] and b["started_at"] < a["ended_at"]


def test_concurrent_multi_objective_nas_resumes_after_a_killed_driver(nas_env):
    tmp_path, env = nas_env
    path = _nas_yaml(tmp_path, "lat", cost="latency_ms", constraint={"latency_ms": 1.0e6})
    proc = subprocess.Popen([sys.executable, "-m", "detflow", "nas", str(path)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    exp = tmp_path / "home" / "nas" / "lat"
    deadline = time.time() + 400
    while time.time() < deadline and not (_ended_trials(exp) and _saved_finished(exp)) and proc.poll() is None:
        time.sleep(0.5)
    finished_before = _saved_finished(exp)  # what the resumed driver will read as finished
    assert finished_before and proc.poll() is None, "no trial ended before the deadline"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-search
    proc.wait()

    r = _cli(["nas", "--resume", "lat", "--json"], tmp_path, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    rows = result["ranked"]
    ids = [t["trial_id"] for t in rows]
    assert len(ids) == 4 and len(set(ids)) == 4  # none lost, none repeated
    assert all(t["status"] in ("TERMINATED", "STOPPED_EARLY") for t in rows), rows
    for t in rows:
        if t["trial_id"] in finished_before:  # a trial the killed driver had saved as finished is not run again
            assert t["attempts"] == 1
    assert any(_overlap(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]), "no two trials ran at once"
    import optuna

    study = optuna.load_study(study_name="lat", storage=f"sqlite:///{exp / 'optuna.db'}")
    assert [len(t.values) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE] == [2] * 4

    # the front is the non-dominated set (AP max, latency min); the winner is the best AP under the constraint
    front = {t["trial_id"] for t in result["front"]}
    assert front == {t["trial_id"] for t in rows if t["on_front"]} and front
    for t in rows:
        dominated = any(o["metric"] >= t["metric"] and o["cost/latency_ms"] <= t["cost/latency_ms"]
                        and (o["metric"], o["cost/latency_ms"]) != (t["metric"], t["cost/latency_ms"]) for o in rows)
        assert (t["trial_id"] in front) == (not dominated)
    assert result["best"]["metric"] == max(t["metric"] for t in rows) and result["best"]["trial_id"] in front

    mlflow = _mlflow(tmp_path)
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{result['parent_run_id']}'")
    assert {c.info.run_id for c in children} == {t["mlflow_run_id"] for t in rows}
    client = mlflow.tracking.MlflowClient()
    for c in children:
        assert c.data.tags["detflow.nas"] == "lat" and c.data.metrics["cost/latency_ms"] > 0
        assert "arch.b2_level" in c.data.params and c.info.status == "FINISHED"
        assert [a.path for a in client.list_artifacts(c.info.run_id, "architecture")], c.info.run_id
    parent_files = {a.path for a in client.list_artifacts(result["parent_run_id"])}
    assert {"pareto_front.csv", "ranked.yaml", "best_spec.yaml", "best_train.yaml"} <= parent_files
    plots = {a.path for a in client.list_artifacts(result["parent_run_id"], "search")}
    assert {"search/pareto_front.png", "search/metric_vs_trial.png"} <= plots

    # the transfer config: a kind: train YAML of the winner at full scale that detflow train runs as is
    best_train = result["best_config_path"]
    assert yaml.safe_load(Path(best_train).read_text())["model"]["spec"] == result["best_spec_path"]
    v = _cli(["config", "validate", best_train], tmp_path, env)
    assert v.returncode == 0, v.stdout + v.stderr
    t = _cli(["train", best_train, "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=1"], tmp_path, env)
    assert t.returncode == 0, t.stdout[-3000:] + t.stderr[-3000:]

    # "best AP under X" that no trial meets: no winner, and the reason says so
    from detflow.archsearch.config import NasConfig
    from detflow.archsearch.tracking import _choose

    strict = NasConfig.model_validate({**yaml.safe_load(path.read_text()), "constraint": {"latency_ms": 1e-6}})
    _, winner, message = _choose(strict, rows)
    assert winner is None and "no architecture meets the constraint latency_ms <= 1e-06 (trials finished: 4)" in message


def test_crashed_trials_are_retried_recorded_and_the_search_ends_without_a_winner(nas_env):
    """The proxy's loss overflows (a box-loss weight beyond float32): the trial is retried once,
    then recorded as ERROR with the error, its child run FAILED; the search still finishes, reports that
    no architecture qualifies and writes no best files."""
    tmp_path, env = nas_env
    path = _nas_yaml(tmp_path, "crashy", num_samples=1, max_retries=1, cost="gmacs", constraint={"gmacs": 1e-6},
                     overrides=["model.head.box_loss_weight=1.0e39", "checkpoint.max_failures=0"],
                     scheduler={"name": "none"}, search={"name": "random", "seed": 0})
    r = _cli(["nas", str(path)], tmp_path, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "NAS crashy: no trial finished with a val/bbox_mAP (trials: 1)" in " ".join(r.stdout.split()), r.stdout[-2000:]
    exp = tmp_path / "home" / "nas" / "crashy"
    rows = yaml.safe_load((exp / "ranked.yaml").read_text())
    assert len(rows) == 1
    for t in rows:
        assert t["status"] == "ERROR" and t["attempts"] == 2 and len(t["errors"]) == 2
        assert "non-finite loss" in t["error"]
    assert not (exp / "best_spec.yaml").exists() and not (exp / "best_train.yaml").exists()
    mlflow = _mlflow(tmp_path)
    for t in rows:
        run = mlflow.get_run(t["mlflow_run_id"])
        assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["detflow.error"]
    parent = json.loads((exp / "detflow_nas.json").read_text())["parent_run_id"]
    assert mlflow.get_run(parent).info.status == "FINISHED"
    assert mlflow.get_run(parent).data.tags["detflow.failed_trials"] == "1"
