"""A SpineNet NAS on the real two-node Ray cluster (``ray_cluster``, 1 CPU per node) with its Tune
experiment and trial training runs in S3 (``storage: s3://…``).

Two proxy trainings of one Ray Train worker (1 CPU) each run at the same time: on two 1-CPU nodes
that means one per node. The experiment state and every trial's checkpoints are in the bucket (a
trial retried on the other node continues from there); only the driver's own state (Optuna study,
state file, results) stays under the submitter's ``DETFLOW_HOME``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli import run_cli

pytestmark = [pytest.mark.services, pytest.mark.cluster, pytest.mark.slow]

BUCKET = "detflow-cluster"
BASE = {
    "kind": "train", "name": "cluster-nas-base", "model": {"name": "spinenet_49s"},
    "data": {"train": {"annotations": "data/train.json", "images": "data/images"},
             "val": {"annotations": "data/val.json", "images": "data/images"}, "image_size": 64},
    "recipe": {"name": "retinanet"},
    "train": {"epochs": 1, "batch_size": 2, "schedule": {"warmup_iters": 1}},
    "checkpoint": {"every": 1, "keep_last": 1},
}


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _overlap(a: dict, b: dict) -> bool:
    return a["started_at"] < b["ended_at"] and b["started_at"] < a["ended_at"]


def test_nas_trials_run_on_both_nodes_with_the_experiment_in_s3(ray_cluster, s3, tmp_path):
    from detflow.data import generate_synthetic

    generate_synthetic(tmp_path / "data", num_images=12, image_size=64, seed=0)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    name = "cluster-nas"
    storage = f"{ray_cluster.storage}/search"
    nas = {"kind": "nas", "name": name, "base": "base.yaml", "num_samples": 2, "max_concurrent_trials": 2,
           "metric": "val/bbox_mAP", "cost": "params_M", "search": {"name": "random", "seed": 0},
           "scheduler": {"name": "none"}, "resources": {"workers": 1, "cpus_per_worker": 1}, "storage": storage,
           "proxy": {"filter_size_scale": 0.25, "image_size": 64, "epochs": 1, "holdout_fraction": 0.3,
                     "max_steps_per_epoch": 2}}
    (tmp_path / "nas.yaml").write_text(yaml.safe_dump(nas))
    env = ray_cluster.client_env()
    proc = run_cli(["nas", str(tmp_path / "nas.yaml"), "--address", ray_cluster.cluster.address, "--json"], env,
                   timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # --json prints one JSON line; Ray's own warnings may come after it
    result = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))
    rows = result["ranked"]
    assert len(rows) == 2 and {r["status"] for r in rows} == {"TERMINATED"}, rows
    # two 1-CPU trials at once on two 1-CPU nodes: one on each node
    assert _overlap(rows[0], rows[1]), f"the trials did not run at once: {rows}"
    assert result["best_config_path"] and Path(result["best_config_path"]).exists()

    client = s3.client()
    prefix = storage.removeprefix(f"s3://{BUCKET}/") + f"/{name}/"
    keys = _keys(client, prefix)
    assert any("experiment_state" in k or k.endswith("tuner.pkl") for k in keys), keys[:20]
    for row in rows:  # every trial's Ray Train run (its checkpoint) is in the bucket
        run = f"{prefix}trials/{name}-{row['trial_id']}"
        assert any(k.startswith(run) and "checkpoint" in k for k in keys), (run, keys[:40])
    local = Path(env["DETFLOW_HOME"]) / "nas" / name
    assert (local / "detflow_nas.json").exists() and not (local / "trials").exists()
    assert not any(secret in proc.stdout + proc.stderr for secret in ray_cluster.secrets)
