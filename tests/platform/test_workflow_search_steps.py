"""The ``sweep`` and ``nas`` step kinds end to end on CPU with real local Ray and MLflow: a search
step feeds a ``train`` step through ``config_from:``, and the search lands in MLflow as a parent run
with one child run per trial/architecture (slow: ~2–3 min each on a 2-core machine). The steps'
search fields are the search configs' own, so a bad space fails at lint, before anything runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

SWEEP_THEN_TRAIN = """
kind: workflow
name: swtiny
defaults:
  model: rtmdet_tiny
  data: synth
  image_size: 96
  scaling: {workers: 1, cpus_per_worker: 1}
steps:
  - id: synth
    uses: synth
    with: {num_images: 12, image_size: 96, num_classes: 2, val_fraction: 0.25}
  - id: sweep
    uses: sweep
    needs: [synth]
    with:
      recipe: {name: plain}
      train: {epochs: 1, batch_size: 2, max_steps_per_epoch: 2, schedule: {warmup_iters: 1},
              optimizer: {scale_lr_by_batch: false}}
      space:
        model.assigner.soft_center_alpha: {uniform: [5.0, 20.0]}
        model.neck.expand_ratio: {choice: [0.25, 0.75]}
      metric: train/loss
      mode: min
      num_samples: 2
      max_concurrent: 2
      search: {name: random, seed: 0}
      scheduler: {name: none}
      trial_resources: {workers: 1, cpus_per_worker: 1}
  - id: train
    uses: train
    needs: [sweep]
    with:
      config_from: sweep
      train: {epochs: 1, batch_size: 2, max_steps_per_epoch: 2}
"""

NAS_THEN_TRAIN = """
kind: workflow
name: nastiny
defaults:
  data: synth
  image_size: 64
  scaling: {workers: 1, cpus_per_worker: 1}
steps:
  - id: synth
    uses: synth
    with: {num_images: 12, image_size: 64, num_classes: 2, val_fraction: 0.25}
  - id: nas
    uses: nas
    needs: [synth]
    with:
      model: spinenet_49s
      recipe: {name: retinanet}
      train: {epochs: 1, batch_size: 2, schedule: {warmup_iters: 1}, optimizer: {scale_lr_by_batch: false}}
      num_samples: 2
      search: {name: random, seed: 0}
      proxy: {filter_size_scale: 0.25, image_size: 64, epochs: 1, holdout_fraction: 0.3, max_steps_per_epoch: 2}
  - id: train
    uses: train
    needs: [nas]
    with:
      config_from: nas
      train: {epochs: 1, batch_size: 2, max_steps_per_epoch: 2}
"""


@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from detflow.ray_env import init_ray

    started = init_ray(num_cpus=2, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DETFLOW_STATE_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return tmp_path


def _run(home: Path, text: str, name: str):
    from detflow import sdk

    path = home / f"{name}.yaml"
    path.write_text(text)
    result = sdk.run(path, state_url=f"sqlite:///{home / 'state.db'}", quiet=True)
    assert result.status == "succeeded", result.error
    return result


def _children(client, parent_id: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.mark.slow
def test_sweep_feeds_best_config_to_train(ray_local, home):
    from mlflow.tracking import MlflowClient

    result = _run(home, SWEEP_THEN_TRAIN, "swtiny")
    sweep = result.outputs("sweep")
    best = sweep["best_values"]
    assert set(best) == {"model.assigner.soft_center_alpha", "model.neck.expand_ratio"}
    assert 5.0 <= best["model.assigner.soft_center_alpha"] <= 20.0 and best["model.neck.expand_ratio"] in (0.25, 0.75)

    trained = yaml.safe_load(Path(result.outputs("train")["config"]).read_text())
    model = trained["model"]
    assert model["name"] == "rtmdet_tiny"
    assert model["assigner"]["soft_center_alpha"] == pytest.approx(best["model.assigner.soft_center_alpha"])
    assert model["neck"]["expand_ratio"] == best["model.neck.expand_ratio"]
    assert trained["train"]["epochs"] == 1 and trained["train"]["max_steps_per_epoch"] == 2

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    parent = client.get_run(sweep["sweep_run_id"])
    assert parent.info.status == "FINISHED"
    trials = _children(client, sweep["sweep_run_id"])
    assert len(trials) == 2 and all(t.data.tags["detflow.sweep"].endswith(".sweep") for t in trials)  # <run_id>.<step>
    best_loss = min(t.data.metrics["train/loss"] for t in trials)
    assert sweep["metrics"]["best"] == pytest.approx(best_loss, rel=1e-4)
    versions = client.search_model_versions("name='swtiny'")
    assert [v.tags["detflow.source_step"] for v in versions] == ["train"]


@pytest.mark.slow
def test_nas_feeds_best_spec_to_train(ray_local, home):
    from detmodels.families.spinenet_spec import load_spec
    from mlflow.tracking import MlflowClient

    result = _run(home, NAS_THEN_TRAIN, "nastiny")
    nas = result.outputs("nas")
    trained = yaml.safe_load(Path(result.outputs("train")["config"]).read_text())
    assert trained["model"]["name"] == "spinenet"
    spec_path = Path(trained["model"]["spec"])
    assert spec_path.is_file() and str(spec_path) == nas["spec"]
    spec, proxy = load_spec(spec_path), load_spec(nas["proxy_spec"])  # both validate as block graphs
    assert spec.blocks == proxy.blocks  # the searched architecture ...
    assert proxy.scale.filter_size_scale == 0.25  # ... found at the proxy's scale (SpineNet §4)
    assert (spec.scale.filter_size_scale, spec.scale.endpoints_num_filters) == (0.65, 128)  # trained as 49S

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    parent = client.get_run(nas["nas_run_id"])
    assert parent.data.tags.get("detflow.nas_rejected") is not None
    archs = _children(client, nas["nas_run_id"])
    assert len(archs) == 2 and all("cost/gmacs" in a.data.metrics for a in archs)
    best_metric = max(a.data.metrics["val/bbox_mAP"] for a in archs)
    assert nas["metrics"]["best"] == pytest.approx(best_metric, abs=1e-6)
    versions = client.search_model_versions("name='nastiny'")
    assert [v.tags["detflow.source_step"] for v in versions] == ["train"]


def test_search_fields_are_the_search_configs_and_validate_at_lint():
    from detflow.errors import ConfigError
    from detflow.archsearch.config import NasConfig, NasObjective
    from detflow.tune.config import SweepConfig, SweepSearch
    from detflow.workflows.lint import parse_workflow
    from detflow.workflows.schema import NASParams, SweepParams

    for params, shared, full in ((SweepParams, SweepSearch, SweepConfig), (NASParams, NasObjective, NasConfig)):
        assert set(shared.model_fields) <= set(params.model_fields) & set(full.model_fields)
        assert all(params.model_fields[k].annotation == full.model_fields[k].annotation for k in shared.model_fields)

    def lint(kind: str, **with_):
        return parse_workflow({"name": "w", "defaults": {"model": "rtmdet_tiny", "data": {
            "train": {"annotations": "a.json", "images": "i"}}}, "steps": [{"id": "s", "uses": kind, "with": with_}]})

    wf = lint("sweep", space={"train.epochs": 3, "model.neck.expand_ratio": {"choice": [0.25, 0.5]}})
    space = wf.step("s").with_.space
    assert (space["train.epochs"].kind, space["train.epochs"].fixed) == ("fixed", 3)
    assert space["model.neck.expand_ratio"].choice == [0.25, 0.5]
    with pytest.raises(ConfigError, match=r"step 's': with.space.model.assigner.soft_center_alpha: .*low must be < high"):
        lint("sweep", space={"model.assigner.soft_center_alpha": {"uniform": [20, 5]}})
    with pytest.raises(ConfigError, match=r"step 's': with.space"):
        lint("sweep", space={})
    with pytest.raises(ConfigError, match=r"step 's': with.proxy.filter_size_scale"):
        lint("nas", proxy={"filter_size_scale": 0})
