"""``detflow.sweep(...)`` and ``detflow.nas(...)`` called from Python as users do (a script run with
its own DETFLOW_HOME): each returns a result whose ``best_config_path`` is a file ``detflow train``
accepts and whose ``parent_run_id`` is an MLflow run holding the trials as children."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import json, sys
    import detflow

    if sys.argv[1] == "sweep":
        result = detflow.sweep(
            "base_rtm.yaml", {"model.assigner.soft_center_alpha": {"uniform": [5.0, 20.0]}},
            metric="train/loss", mode="min", num_samples=2, max_concurrent=2, scheduler="none",
            search={"name": "random", "seed": 0}, name="sdk-sweep", resources={"workers": 1, "cpus_per_worker": 1})
        best = {"value": result.best_metric, "values": result.best_values}
    else:
        result = detflow.nas("nas.yaml", num_samples=2, max_concurrent_trials=2)
        best = {"value": result.best["metric"], "trial_id": result.best["trial_id"],
                "front": [r["trial_id"] for r in result.front]}
    print(json.dumps({"best_config_path": result.best_config_path, "parent_run_id": result.parent_run_id, **best}))
""")

RTM = {"kind": "train", "name": "sdkrtm", "model": {"name": "rtmdet_tiny"},
       "data": {"train": {"annotations": "data/train.json", "images": "data/images"},
                "val": {"annotations": "data/val.json", "images": "data/images"}, "image_size": 64},
       "recipe": {"name": "plain"},
       "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2, "schedule": {"warmup_iters": 1},
                 "optimizer": {"scale_lr_by_batch": False}},
       "scaling": {"workers": 1, "cpus_per_worker": 1}}
SPINE = {**RTM, "name": "sdkspine", "model": {"name": "spinenet_49s"}, "recipe": {"name": "retinanet"}}
NAS = {"kind": "nas", "name": "sdk-nas", "base": "base_spine.yaml", "metric": "val/bbox_mAP", "cost": "params_M",
       "search": {"name": "nsga2", "seed": 0}, "scheduler": {"name": "none"},
       "proxy": {"filter_size_scale": 0.25, "image_size": 64, "epochs": 1, "holdout_fraction": 0.3,
                 "max_steps_per_epoch": 2}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from detflow.data import generate_synthetic

    root = tmp_path_factory.mktemp("sdk")
    generate_synthetic(root / "data", num_images=12, image_size=64, seed=0)
    for name, data in (("base_rtm.yaml", RTM), ("base_spine.yaml", SPINE), ("nas.yaml", NAS)):
        (root / name).write_text(yaml.safe_dump(data))
    (root / "user.py").write_text(SCRIPT)
    env = {**os.environ, "DETFLOW_HOME": str(root / "home"), "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return root, env


@pytest.mark.parametrize("kind", ["sweep", "nas"])
def test_sdk_search_returns_best_config_and_parent_run(workdir, kind):
    root, env = workdir
    r = subprocess.run([sys.executable, "user.py", kind], cwd=root, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["value"] is not None and out["best_config_path"]
    check = subprocess.run([sys.executable, "-m", "detflow", "config", "validate", out["best_config_path"]],
                           cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    best = yaml.safe_load(open(out["best_config_path"]))
    assert best["kind"] == "train"
    if kind == "nas":
        assert best["model"]["name"] == "spinenet" and out["trial_id"] in out["front"]
    else:
        assert best["model"]["assigner"]["soft_center_alpha"] == pytest.approx(out["values"]["model.assigner.soft_center_alpha"])

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'home' / 'mlflow.db'}")
    parent = mlflow.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags[f"detflow.{kind}"] == f"sdk-{kind}"
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
    assert len(children) == 2
