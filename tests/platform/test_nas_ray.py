"""A tiny SpineNet architecture search end to end on CPU: Optuna samples specs, each builds and
trains on the proxy task through Ray Train, the held-out AP ranks them; a best spec YAML comes out,
every architecture is a child MLflow run, and a resumed search does not repeat finished samples."""
import json
import os
import subprocess
import sys

import pytest
import yaml

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


def test_tiny_nas_end_to_end_and_resume(tmp_path):
    from detflow.data import generate_synthetic
    from detmodels.families.spinenet_spec import load_spec

    generate_synthetic(tmp_path / "data", num_images=12, image_size=64, seed=0)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    nas = {"kind": "nas", "name": "tiny-nas", "base": "base.yaml", "num_samples": 2, "metric": "val/bbox_mAP",
           "search": {"name": "random", "seed": 0},
           "proxy": {"filter_size_scale": 0.25, "image_size": 64, "epochs": 1, "holdout_fraction": 0.3,
                     "max_steps_per_epoch": 2}}
    (tmp_path / "nas.yaml").write_text(yaml.safe_dump(nas))
    env = {**os.environ, "DETFLOW_HOME": str(tmp_path / "home"), "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run([sys.executable, "-m", "detflow", "nas", "nas.yaml", "--json"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(result["ranked"]) == 2 and result["best_spec_path"]
    best = load_spec(result["best_spec_path"])  # a valid spec, ready for `model: {name: spinenet, spec: …}`
    assert best.scale.filter_size_scale == 0.25

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{result['parent_run_id']}'")
    assert len(children) == 2
    assert all("arch/gmacs" in c.data.metrics and "arch.block2" in c.data.params for c in children)

    # resuming a finished search runs nothing new and keeps the ranking
    nas["num_samples"] = 3
    r2 = subprocess.run([sys.executable, "-m", "detflow", "nas", "--resume", "tiny-nas", "--json"], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=900)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    again = json.loads(r2.stdout.strip().splitlines()[-1])
    assert [row["trial"] for row in again["ranked"]] == [row["trial"] for row in result["ranked"]]
