"""``detflow submit`` to the real two-node Ray cluster (``ray_cluster``) through its Jobs API, followed
with ``detflow status / logs / cancel --address``; then everything Ray and MLflow store about the runs
is read back and searched for the services' secrets (S3 secret key, PostgreSQL password).

The submitter runs as a user would (``python -m detflow`` with ``ray_cluster.client_env()``); every
Ray read happens in a subprocess, so this test process never becomes a driver of the cluster.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli import cli_json, run_cli

pytestmark = [pytest.mark.services, pytest.mark.cluster]

TRAIN = {"recipe": {"name": "rtmdet", "mosaic": {"max_cached_images": 6}, "mixup": {"max_cached_images": 3}},
         "train": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 2, "eval_interval": 2,
                   "optimizer": {"lr": 0.002, "scale_lr_by_batch": False}, "schedule": {"warmup_iters": 1}},
         "checkpoint": {"every": 1, "keep_last": 1}}


def _tiny(name: str, storage: str) -> dict:
    """TINY_WORKFLOW (synth → 1-worker RTMDet-tiny, 2 short epochs) storing its outputs in S3."""
    return {"name": name, "registered_model": f"{name}-rtmdet",
            "defaults": {"storage": storage, "model": "rtmdet_tiny", "data": "synth", "image_size": 64,
                         "scaling": {"workers": 1, "cpus_per_worker": 1}},
            "steps": [{"id": "synth", "uses": "synth",
                       "with": {"num_images": 12, "image_size": 64, "num_classes": 2, "seed": 0}},
                      {"id": "train", "uses": "train", "needs": ["synth"], "with": TRAIN}]}


def _long(name: str, storage: str) -> dict:
    """A synth step that runs for about a minute: the one to cancel."""
    return {"name": name, "defaults": {"storage": storage},
            "steps": [{"id": "big", "uses": "synth", "with": {"num_images": 5000, "image_size": 64, "seed": 1}}]}


class Submitter:
    """``detflow submit / status / logs / cancel --address`` as a user on another machine runs them."""

    def __init__(self, ray_cluster, tmp_path: Path):
        self.env = ray_cluster.client_env()
        self.address = ray_cluster.cluster.dashboard_url
        self.tmp_path = tmp_path
        self.seen: list[str] = []  # everything the commands printed (searched for secrets too)

    def cli(self, *args: str, timeout: float = 180) -> str:
        proc = run_cli([*args, "--address", self.address], self.env, timeout=timeout)
        self.seen += [proc.stdout, proc.stderr]
        return proc.stdout

    def submit(self, wf: dict) -> str:
        path = self.tmp_path / f"{wf['name']}.yaml"
        path.write_text(yaml.safe_dump({"kind": "workflow", **wf}, sort_keys=False))
        # the cluster's interpreter (here the venv's; the default `python` need not have detflow)
        t0 = time.time()
        run_id = self.cli("submit", str(path), "--python", sys.executable).strip().splitlines()[-1]
        assert time.time() - t0 < 60, "submit waits for the run"
        return run_id

    def status(self, run_id: str) -> dict:
        return cli_json(self.cli("status", run_id, "--json"))

    def wait(self, run_id: str, until, timeout: float) -> dict:
        deadline = time.time() + timeout
        while True:
            result = self.status(run_id)
            if until(result) or time.time() > deadline:
                return result
            time.sleep(3.0)


def _ray_records(ray_cluster) -> dict:
    """Everything the Jobs API and the state API hold, read in a subprocess (JSON)."""
    code = f"""
import json
from ray.job_submission import JobSubmissionClient
from ray.util import state
address = {ray_cluster.cluster.dashboard_url!r}
client = JobSubmissionClient(address)
jobs = client.list_jobs()
out = {{"jobs": jobs, "job_info": [client.get_job_info(j.submission_id) for j in jobs if j.submission_id],
        "job_logs": [client.get_job_logs(j.submission_id) for j in jobs if j.submission_id]}}
for name in ("list_tasks", "list_actors", "list_jobs", "list_runtime_envs", "list_workers", "list_placement_groups",
             "list_nodes"):
    out[name] = getattr(state, name)(address=address, detail=True, limit=10000, raise_on_missing_output=False)
print(json.dumps(out, default=lambda o: getattr(o, "__dict__", None) or str(o)))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=ray_cluster.client_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mlflow_records(tracking_url: str, experiment: str, dest: Path) -> tuple[str, list[Path]]:
    """Every run of ``experiment``: info, params, tags, metrics (JSON) and its downloaded artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_url)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert runs, "the workflow logged no MLflow run"
    for run in runs:
        client.download_artifacts(run.info.run_id, "", str(dest / run.info.run_id))
    text = json.dumps([exp.to_proto().__str__()] + [run.to_dictionary() for run in runs], default=str)
    return text, [p for p in dest.rglob("*") if p.is_file()]


def test_submit_follow_cancel_and_no_secret_anywhere(ray_cluster, tmp_path):
    """Submit a tiny workflow and a long one (cancelled while it runs); then search the Jobs API, the
    state API and the MLflow experiment (params, tags, artifacts) for every secret value."""
    user = Submitter(ray_cluster, tmp_path)

    # 1. a synth → train workflow to success, followed through the Jobs API
    run_id = user.submit(_tiny("cluster-submit", ray_cluster.storage))
    result = user.wait(run_id, lambda r: r["status"] in ("succeeded", "failed", "cancelled"), timeout=600)
    driver_log = user.cli("logs", run_id)
    assert result["status"] == "succeeded", f"{result}\n{driver_log[-3000:]}"
    assert f"run {run_id}: 2 steps" in driver_log and "train: succeeded" in driver_log, driver_log[-3000:]
    assert f"run {run_id}: succeeded" in driver_log
    step_log = user.cli("logs", run_id, "synth")
    assert "--- synth attempt 1" in step_log, step_log[:1000]

    # 2. a long workflow, cancelled while its step runs: the Ray job is stopped, the run cancelled
    long_id = user.submit(_long("cluster-cancel", ray_cluster.storage))
    running = user.wait(long_id, lambda r: r["steps"]["big"]["status"] == "running"
                        or r["status"] not in ("pending", "running"), timeout=300)
    assert running["steps"]["big"]["status"] == "running", running
    assert long_id in user.cli("cancel", long_id, timeout=120)
    cancelled = user.wait(long_id, lambda r: r["status"] in ("cancelled", "failed", "succeeded"), timeout=120)
    assert cancelled["status"] == "cancelled", cancelled
    assert cancelled["steps"]["big"]["status"] == "cancelled", cancelled

    # 3. what Ray stores about both jobs
    ray_records = _ray_records(ray_cluster)
    jobs = {j["submission_id"]: j for j in ray_records["job_info"]}
    assert jobs[run_id]["status"] == "SUCCEEDED" and jobs[long_id]["status"] == "STOPPED", jobs
    expected = (f"{sys.executable} -m detflow run workflow.yaml --run-id {run_id} "
                f"--state-url {ray_cluster.state_url}")
    assert jobs[run_id]["entrypoint"] == expected
    assert set(jobs[run_id]["runtime_env"]) <= {"working_dir", "_ray_commit"}, jobs[run_id]["runtime_env"]
    assert jobs[run_id]["metadata"]["detflow_run_id"] == run_id
    assert any(t.get("name") == "cluster-submit.train" for t in ray_records["list_tasks"])  # the tasks are there
    assert any(t.get("name") == "RayTrainWorker.run_train_fn" for t in ray_records["list_tasks"])
    assert ray_records["list_runtime_envs"] and ray_records["list_actors"]

    # 4. what MLflow stores about the experiment, and search everything for the secrets
    mlflow_text, artifacts = _mlflow_records(ray_cluster.tracking_url, "cluster-submit", tmp_path / "artifacts")
    assert any(p.name == "workflow.yaml" for p in artifacts)
    haystacks = {"ray": json.dumps(ray_records, default=str), "mlflow": mlflow_text,
                 "cli output": "\n".join(user.seen), "runs": json.dumps([result, cancelled], default=str)}
    haystacks.update({f"artifact {p.relative_to(tmp_path)}": p.read_bytes().decode("latin-1") for p in artifacts})
    for secret in ray_cluster.secrets:
        leaks = [where for where, text in haystacks.items() if secret in text]
        assert not leaks, f"a secret value appears in: {leaks}"
