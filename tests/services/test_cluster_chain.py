"""Workflows on the real two-node Ray cluster (``ray_cluster``): storage in S3, state in PostgreSQL.

a. synth → train (2 Ray Train workers, one per node) → qat → export → benchmark, each step pinned to
   the node other than its input's producer: every artifact is in S3, nothing stays on the nodes;
   the training run has MLflow system metrics of each node (``system/node0/…``, ``system/node1/…``).
b. the worker node's raylet SIGKILLed mid-training, a replacement node joins: the run completes and
   every epoch is in MLflow exactly once.
d. the driver SIGKILLed mid-run: ``detflow resume`` from another process finishes the run without
   re-running the steps that had finished.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli import cli_json, run_cli

pytestmark = [pytest.mark.services, pytest.mark.cluster, pytest.mark.slow]

BUCKET = "detflow-cluster"
TRAIN = {"recipe": {"name": "rtmdet", "mosaic": {"max_cached_images": 6}, "mixup": {"max_cached_images": 3}},
         "train": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 2, "eval_interval": 2,
                   "optimizer": {"lr": 0.002, "scale_lr_by_batch": False}, "schedule": {"warmup_iters": 1}},
         "checkpoint": {"every": 1, "keep_last": 1}}


def _on(node: str) -> dict:
    return {"custom": {f"node_{node}": 0.001}}


def chain_workflow(name: str, storage: str) -> dict:
    """The issue's chain; ``node`` pins alternate so that each step reads what the other node wrote."""
    return {
        "name": name,
        "defaults": {"storage": storage, "model": "rtmdet_tiny", "data": "synth", "image_size": 64,
                     "scaling": {"workers": 2, "cpus_per_worker": 1}},
        "steps": [
            {"id": "synth", "uses": "synth", "resources": _on("a"),
             "with": {"num_images": 12, "image_size": 64, "num_classes": 2, "seed": 0}},
            {"id": "train", "uses": "train", "needs": ["synth"], "resources": {**_on("b"), "num_cpus": 0},
             "with": TRAIN},
            {"id": "qat", "uses": "qat", "needs": ["train"], "resources": _on("a"),
             "with": {"checkpoint": "train", "epochs": 1, "max_steps_per_epoch": 1}},
            {"id": "export", "uses": "export", "needs": ["train"], "resources": _on("a"),
             "with": {"checkpoint": "train", "input_size": 64}},
            {"id": "bench", "uses": "benchmark", "needs": ["qat", "export"], "resources": _on("b"),
             "with": {"artifacts": ["qat", "export"], "backends": ["onnxruntime"], "batch_sizes": [1],
                      "input_size": 64, "warmup": 1, "iters": 2, "max_eval_images": 4}},
        ],
    }


def _write(tmp_path: Path, wf: dict) -> Path:
    path = tmp_path / f"{wf['name']}.yaml"
    path.write_text(yaml.safe_dump({"kind": "workflow", **wf}, sort_keys=False))
    return path


def _keys(client, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def _step_node(client, run_id: str, step: str) -> str:
    """The node IP a step's (last) attempt ran on, from its stored log."""
    log = client.get_object(Bucket=BUCKET, Key=f"runs/{run_id}/{step}/step.log")["Body"].read().decode()
    headers = re.findall(rf"^--- {re.escape(step)} attempt \d+ \(.*\) on node (\S+)$", log, re.M)
    return headers[-1]


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_chain_runs_across_nodes_with_every_artifact_in_s3(ray_cluster, s3, tmp_path):
    """(a) Each step reads its inputs from S3, written by a step on the other node."""
    wf = chain_workflow("cluster-chain", ray_cluster.storage)
    env = ray_cluster.client_env()
    proc = run_cli(["run", str(_write(tmp_path, wf)), "--address", ray_cluster.cluster.address, "--json"], env,
                   timeout=900)
    result = cli_json(proc.stdout)
    assert result["status"] == "succeeded", result
    run_id, client = result["run_id"], s3.client()
    keys = _keys(client, f"runs/{run_id}/")
    nodes = {"a": ray_cluster.cluster.node("a").ip, "b": ray_cluster.cluster.node("b").ip}
    for step in wf["steps"]:
        outputs = result["steps"][step["id"]]["outputs"]
        # every artifact an output names is a stored S3 object (or prefix) of this run and step
        paths = [p for p in _strings(outputs) if p.startswith(("/", "s3://"))]
        assert paths and all(p.startswith(f"{ray_cluster.storage}/{run_id}/{step['id']}/") for p in paths), outputs
        for path in paths:
            key = path.removeprefix(f"s3://{BUCKET}/")
            assert any(k == key or k.startswith(key + "/") for k in keys), (path, keys[:20])
        pinned = next(iter(step["resources"]["custom"])).removeprefix("node_")
        assert _step_node(client, run_id, step["id"]) == nodes[pinned]
    assert any(k.endswith(".onnx") for k in keys) and any("/train/runs/" in k and "/checkpoint_" in k for k in keys)
    metrics = _training_run_metrics(ray_cluster.tracking_url, run_id)  # each node's local rank 0 logs its own
    for node in ("node0", "node1"):
        assert {f"system/{node}/cpu_utilization_percentage", f"system/{node}/system_memory_usage_megabytes"} <= metrics
    for node in ray_cluster.cluster.nodes:
        assert node.step_leftovers() == [], f"node {node.name} kept {node.step_leftovers()[:5]}"


def _training_run_metrics(tracking_url: str, workflow_run_id: str) -> set[str]:
    """The metric keys of the training run the workflow's train step made (tags workflow run id, kind train)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_url)
    runs = client.search_runs(_experiment_ids(client), max_results=10, filter_string=(
        f"tags.`detflow.workflow_run_id` = '{workflow_run_id}' and tags.`detflow.kind` = 'train'"))
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return set(runs[0].data.metrics)


def _experiment_ids(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def _train_run_dir(client, run_id: str) -> str | None:
    markers = [k for k in _keys(client, f"runs/{run_id}/train/runs/") if k.endswith("detflow_run.json")]
    return markers[0].rsplit("/", 1)[0] if markers else None


def _checkpoints(client, run_dir: str) -> set[str]:
    return {k.split("/")[len(run_dir.split("/"))] for k in _keys(client, run_dir + "/")
            if k.split("/")[len(run_dir.split("/"))].startswith("checkpoint")}


def test_worker_node_lost_mid_training_and_replaced(ray_cluster, s3, tmp_path):
    """(b) SIGKILL the worker node's raylet after the first checkpoint; a new node joins; the run
    completes and the training run's MLflow history has every epoch exactly once."""
    from mlflow.tracking import MlflowClient

    epochs = 5
    train = json.loads(json.dumps(TRAIN))
    train["train"].update(epochs=epochs, max_steps_per_epoch=3, eval_interval=epochs)
    wf = {"name": "cluster-node-loss",
          "defaults": {"storage": ray_cluster.storage, "model": "rtmdet_tiny", "data": "synth", "image_size": 64,
                       "scaling": {"workers": 2, "cpus_per_worker": 1}},
          "steps": [{"id": "synth", "uses": "synth", "resources": _on("a"),
                     "with": {"num_images": 12, "image_size": 64, "num_classes": 2, "seed": 0}},
                    {"id": "train", "uses": "train", "needs": ["synth"], "resources": {**_on("a"), "num_cpus": 0},
                     "with": train}]}
    env = ray_cluster.client_env()
    cmd = [sys.executable, "-m", "detflow", "run", str(_write(tmp_path, wf)), "--address",
           ray_cluster.cluster.address, "--json"]
    out = (tmp_path / "driver.out").open("w")
    driver = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    client, victim = s3.client(), ray_cluster.cluster.node("b")
    try:
        deadline = time.time() + 400
        while time.time() < deadline and driver.poll() is None:
            run_dir = next((d for d in (_train_run_dir(client, r) for r in _run_ids(client, "cluster-node-loss")) if d), None)
            if run_dir and _checkpoints(client, run_dir):
                break
            time.sleep(1.0)
        assert driver.poll() is None, (tmp_path / "driver.out").read_text()[-3000:]
        assert run_dir and _checkpoints(client, run_dir), "no checkpoint within 400 s"
        victim.kill_raylet()
        ray_cluster.cluster.add_node(victim.name)  # the replacement joins while Train waits for a worker slot
        assert driver.wait(600) == 0, (tmp_path / "driver.out").read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        victim.stop()
    result = cli_json((tmp_path / "driver.out").read_text())
    assert result["status"] == "succeeded"
    history = MlflowClient(ray_cluster.tracking_url).get_metric_history(
        result["steps"]["train"]["outputs"]["training_run_id"], "epoch")
    assert sorted(int(m.step) for m in history) == list(range(epochs))  # 0-based, each exactly once


def _run_ids(client, workflow: str) -> list[str]:
    prefixes = client.list_objects_v2(Bucket=BUCKET, Prefix="runs/", Delimiter="/").get("CommonPrefixes", [])
    return [p["Prefix"].split("/")[1] for p in prefixes if p["Prefix"].split("/")[1].startswith(workflow)]


def test_driver_killed_then_resumed_from_another_process(ray_cluster, tmp_path):
    """(d) SIGKILL the driver once synth has finished; `detflow resume` in a new process finishes the
    run and does not run synth again."""
    wf = {"name": "cluster-resume",
          "defaults": {"storage": ray_cluster.storage, "model": "rtmdet_tiny", "data": "synth", "image_size": 64,
                       "scaling": {"workers": 2, "cpus_per_worker": 1}},
          "steps": [{"id": "synth", "uses": "synth", "resources": _on("b"),  # a seed no other test uses: no cache hit
                     "with": {"num_images": 12, "image_size": 64, "num_classes": 2, "seed": 7}},
                    {"id": "train", "uses": "train", "needs": ["synth"], "resources": {**_on("a"), "num_cpus": 0},
                     "with": TRAIN}]}
    env = ray_cluster.client_env(DETFLOW_LEASE_TTL_S="20")
    path = _write(tmp_path, wf)
    driver = subprocess.Popen([sys.executable, "-m", "detflow", "run", str(path), "--address",
                               ray_cluster.cluster.address], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run_id, lines = None, []
    for line in driver.stdout:
        lines.append(line)
        if " run cluster-resume-" in line and run_id is None:
            run_id = line.split(" run ", 1)[1].split(":", 1)[0]
        if "train: running" in line:
            break
    assert run_id, "".join(lines)[-3000:]
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(30)
    # the killed driver's lease is live until it expires (20 s after its last renewal): refused, exit 2
    early = subprocess.run([sys.executable, "-m", "detflow", "resume", run_id, "--address", ray_cluster.cluster.address],
                           env=env, capture_output=True, text=True, timeout=120)
    assert early.returncode == 2 and f"pid {driver.pid}" in early.stderr, early.stderr[-2000:]
    time.sleep(21)
    proc = run_cli(["resume", run_id, "--address", ray_cluster.cluster.address, "--json"], env, timeout=900)
    result = cli_json(proc.stdout)
    assert result["status"] == "succeeded", result
    assert result["steps"]["synth"]["attempts"] == 1
    assert result["steps"]["train"]["status"] == "succeeded"
