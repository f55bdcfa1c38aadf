"""MLflow-native runs on a real embedded SQLite store: dataset inputs (digest = annotation hash),
logged models (run as source, metrics attached, registered versions from them), descriptions and
source tags, system metrics; and one tiny real training on Ray that shows all of them."""
from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from detflow import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield MlflowClient(tracking.configure())
    mlflow.set_tracking_uri(None)


def _coco(path: Path, n_boxes: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4,
                             "iscrowd": 0} for i in range(n_boxes)],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    path.write_text(json.dumps(data))
    return path


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i}.png").write_bytes(b"\x89PNG")
    return folder


def _inputs(client, run_id) -> dict[str, object]:
    """context -> mlflow Dataset entity of the run's dataset inputs."""
    out = {}
    for inp in client.get_run(run_id).inputs.dataset_inputs:
        ctx = {t.key: t.value for t in inp.tags}[tracking.datasets.CONTEXT_TAG]
        out[ctx] = inp.dataset
    return out


def test_dataset_digest_same_data_same_digest_edited_new(store, tmp_path):
    ann, images = _coco(tmp_path / "synth" / "annotations" / "train.json", 3), _images(tmp_path / "synth" / "images", 2)
    val = _coco(tmp_path / "synth" / "annotations" / "val.json", 1)
    a, b, c = (tracking.Run.create(n, experiment="ds") for n in ("a", "b", "c"))
    tracking.log_datasets(a, {"train": (ann, images), "val": {"annotations": str(val), "images": str(images)}})
    tracking.log_datasets(b, {"train": (ann, images), "val": None})
    _coco(ann, 4)  # an edited annotation file
    tracking.log_datasets(c, {"train": (ann, images)})
    da, db, dc = (_inputs(store, r.run_id) for r in (a, b, c))
    assert set(da) == {"train", "val"} and set(db) == {"train"}
    assert da["train"].digest == db["train"].digest != da["val"].digest
    assert dc["train"].digest == tracking.annotation_hash(ann)
    assert dc["train"].digest != da["train"].digest and len(dc["train"].digest) == 16
    assert da["train"].name == "synth/train" and da["val"].name == "synth/val"
    assert json.loads(da["train"].source) == {"uri": str(ann.resolve())} and da["train"].source_type == "local"
    assert json.loads(da["train"].profile) == {"images": 2, "annotations": 3, "classes": 2}
    assert json.loads(dc["train"].profile)["annotations"] == 4


RACERS, ROUNDS = 6, 12
_RACER = """
import sys, time
from detflow import tracking
tracking.configure()
run = tracking.Run.create(sys.argv[1], experiment="race")
t0, rounds = float(sys.argv[2]), sys.argv[3:]
for i, ann in enumerate(rounds):  # every process logs round i's new dataset at the same instant
    time.sleep(max(0.0, t0 + 0.3 * i - time.time()))
    tracking.log_datasets(run, {"train": (ann, ann.rsplit("/", 2)[0] + "/images")})
print(run.run_id)
"""


def test_runs_logging_the_same_new_dataset_at_once_all_get_it(store, tmp_path):
    """The trials of a sweep log one dataset at the same moment: MLflow inserts it once, and every
    run still gets it as an input (the one that loses the insert race looks it up again)."""
    import subprocess
    import sys
    import time

    _images(tmp_path / "race" / "images", 2)
    rounds = [str(_coco(tmp_path / "race" / "annotations" / f"r{i}.json", i + 1)) for i in range(ROUNDS)]
    env = {**os.environ, "DETFLOW_HOME": os.environ["DETFLOW_HOME"], "MLFLOW_DISABLE_TELEMETRY": "true"}
    t0 = time.time() + 15  # after every racer has imported detflow and created its run
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, f"racer{k}", str(t0), *rounds], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(RACERS)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    for out, _ in outs:
        names = {d.name for d in _inputs_all(store, out.strip().splitlines()[-1])}
        assert names == {f"race/r{i}" for i in range(ROUNDS)}
    exp = store.get_experiment_by_name("race").experiment_id
    assert len({(d.name, d.digest) for r in store.search_runs([exp]) for d in _inputs_all(store, r.info.run_id)}) == ROUNDS


def _inputs_all(client, run_id) -> list:
    return [inp.dataset for inp in client.get_run(run_id).inputs.dataset_inputs]


def test_dataset_source_never_holds_credentials(store, tmp_path):
    from detflow.tracking.datasets import _source

    kind, source = _source("s3://AKIAXXXX:topsecret@bucket/synth/train.json?X-Amz-Signature=abc")
    assert kind == "s3" and "topsecret" not in source and "abc" not in source


def test_logged_model_and_registered_version(store, tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "model.pt").write_bytes(b"weights")
    run = tracking.Run.create("train-x", experiment="lm")
    model_id = tracking.log_logged_model(run, "rtmdet_tiny-best", tmp_path / "best", model_type="checkpoint",
                                         metrics={"val/bbox_mAP": 0.25, "latency_ms": 3.5},
                                         params={"model": "rtmdet_tiny", "token": "t0k"})
    model = store.get_logged_model(model_id)
    assert model.source_run_id == run.run_id and str(model.status) == "READY" and model.model_type == "checkpoint"
    assert {m.key: m.value for m in model.metrics} == {"val/bbox_mAP": 0.25, "latency_ms": 3.5}
    assert model.params == {"model": "rtmdet_tiny", "token": "***"}
    assert [o.model_id for o in store.get_run(run.run_id).outputs.model_outputs] == [model_id]
    files = {Path(f.path).name for f in store.list_logged_model_artifacts(model_id)}
    assert files == {"model.pt"}
    version = run.register_model("coco_tiny", model_id=model_id, alias="candidate")
    mv = store.get_model_version("coco_tiny", version)
    assert mv.source == f"models:/{model_id}" and mv.run_id == run.run_id and mv.model_id in (None, model_id)
    links = json.loads(store.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert links == [{"name": "coco_tiny", "version": version}]
    from detflow.tracking.registry import download_model_version

    local = download_model_version("models:/coco_tiny@candidate", tmp_path / "cache")
    assert (local / "model.pt").read_bytes() == b"weights"
    with pytest.raises(ValueError, match="exactly one"):
        run.register_model("coco_tiny", "model", model_id=model_id)


def test_readable_tags_and_description():
    text = tracking.train_description("rtmdet_tiny", "synth", 400, epochs=18, workers=2)
    assert text == "train rtmdet_tiny on synth (400 img), 18 epochs, 2 workers"
    assert tracking.train_description("m", "d", None, epochs=1, workers=1) == "train m on d, 1 epoch, 1 worker"
    tags = tracking.readable_tags(text, source="detflow train", family="rtmdet", size=None, git_commit="abc")
    assert tags == {"detflow.family": "rtmdet", "detflow.git_commit": "abc", "mlflow.note.content": text,
                    "mlflow.source.name": "detflow train", "mlflow.source.type": "JOB",
                    "mlflow.source.git.commit": "abc"}
    with pytest.raises(TypeError, match="colour"):
        tracking.readable_tags(colour="red")


def test_system_metrics_of_a_short_run(store):
    run = tracking.Run.create("sys", experiment="sm")
    monitor = tracking.start_system_metrics(run.run_id, interval_s=30)
    assert monitor is not None
    tracking.stop_system_metrics(monitor)
    keys = set(store.get_run(run.run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys
    assert tracking.throughput_metrics({"train/data_wait_fraction": 0.2, "train/images_per_s": 12, "x": 1}) == {
        "system/detflow/data_wait_fraction": 0.2, "system/detflow/images_per_s": 12.0}


# --------------------------------------------------------------------------- a real tiny training
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=8, image_size=64, seed=0, val_fraction=0.25)


def _cfg(synth, storage: Path, name: str):
    from detflow.config import TrainConfig, parse_config

    return parse_config(TrainConfig, {
        "name": name, "model": {"name": "rtmdet_tiny"},
        "data": {"train": {"annotations": str(synth.train_json), "images": str(synth.images_dir)},
                 "val": {"annotations": str(synth.val_json), "images": str(synth.images_dir)}, "image_size": 64},
        "recipe": {"name": "rtmdet", "mosaic": {"max_cached_images": 4}, "mixup": {"max_cached_images": 2}},
        "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2, "schedule": {"warmup_iters": 1},
                  "optimizer": {"scale_lr_by_batch": False}},
        "scaling": {"workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every": 1},
        "storage": str(storage),
    })


@pytest.mark.slow
def test_tiny_training_is_mlflow_native(ray_session, synth, tmp_path):
    from detflow.train import run_training

    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    try:
        first = run_training(_cfg(synth, tmp_path / "runs", "native-a"), progress=False)
    finally:
        os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", None)
    client = MlflowClient(tracking.configure())
    run = client.get_run(first.run_id)
    tags, keys = run.data.tags, set(run.data.metrics)
    assert tags["mlflow.note.content"].startswith("train rtmdet_tiny on ") and ", 1 epoch, 1 worker" in tags["mlflow.note.content"]
    assert tags["mlflow.source.name"] == "detflow train" and tags["mlflow.source.type"] == "JOB"
    assert tags["detflow.family"] == "rtmdet" and tags["detflow.size"] == "tiny"
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
            "system/detflow/images_per_s", "system/detflow/data_wait_fraction", "train/data_wait_fraction",
            "train/images_per_s"} <= keys
    other = tracking.Run.create("same-data", experiment="detflow")  # another run on the same annotations
    tracking.log_datasets(other, {"train": (synth.train_json, synth.images_dir)})
    a, b = _inputs(client, first.run_id), _inputs(client, other.run_id)
    assert set(a) == {"train", "val"} and a["train"].digest == b["train"].digest != a["val"].digest
    [out] = run.outputs.model_outputs
    model = client.get_logged_model(out.model_id)
    assert model.source_run_id == first.run_id and model.name == "rtmdet_tiny-best"
    assert {m.key for m in model.metrics} >= {"best/val/bbox_mAP", "best/val/bbox_mAP50"}
    # attached once: the run's epoch history keeps one point per epoch
    assert [m.step for m in client.get_metric_history(first.run_id, "val/bbox_mAP50")] == [0]
    drawn = [a.path for a in client.list_artifacts(first.run_id, "predictions")]  # the best model on val images
    assert drawn and all(p.endswith(".png") for p in drawn), drawn


def test_sweep_parent_and_trial_are_described(store, synth, tmp_path):
    from detflow.train.run_meta import train_tags

    cfg = _cfg(synth, tmp_path / "runs", "lr")
    trial = train_tags(cfg, {"detflow.sweep": "lr", "detflow.trial_label": "lr=0.01"})
    assert trial["mlflow.note.content"].startswith("sweep lr trial lr=0.01: train rtmdet_tiny on ")
    assert trial["detflow.family"] == "rtmdet" and trial["detflow.size"] == "tiny"
    parent_id = tracking.remembered_parent_run(tmp_path / "state.json", cfg, kind="sweep", resume=False)
    tags = store.get_run(parent_id).data.tags
    assert tags["mlflow.source.name"] == "detflow sweep lr" and tags["detflow.sweep"] == "lr"
    assert tags["mlflow.note.content"] == "sweep lr: the parent run of its trials"


@pytest.mark.slow
def test_an_attempt_that_died_before_describing_its_run_is_continued_and_described(ray_session, synth, tmp_path):
    """A trial attempt that died right after creating its MLflow run (e.g. the store was briefly
    down) leaves the run marker; the retry continues that same run and logs what was missing."""
    from detflow.train import run_training
    from detflow.train import runner

    cfg = _cfg(synth, tmp_path / "runs", "retried")
    client = MlflowClient(tracking.configure())
    orphan = tracking.Run.create("retried", experiment=cfg.experiment)
    name = runner._new_run_name(str(cfg.storage), cfg.name)
    runner._write_marker(str(cfg.storage), name, {"run_id": orphan.run_id, "name": name, "created": 0.0,
                                                  "config": runner.resolve_train_config(cfg, None).model_dump(mode="json"),
                                                  "described": False})
    result = run_training(cfg, resume=True, progress=False)
    assert result.run_id == orphan.run_id
    run = client.get_run(orphan.run_id)
    assert run.data.params["model.name"] == "rtmdet_tiny" and "train/loss" in run.data.metrics
    assert set(_inputs(client, orphan.run_id)) == {"train", "val"}
    marker = json.loads((tmp_path / "runs" / name / runner.RUN_MARKER).read_text())
    assert marker["described"] is True and marker["run_id"] == orphan.run_id
    assert len(client.search_runs([run.info.experiment_id], "tags.mlflow.runName = 'retried'")) == 1
