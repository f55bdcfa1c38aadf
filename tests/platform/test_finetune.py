"""Fine-tuning from a checkpoint of another class count (issue 21, point 3): what is loaded, what is
re-initialised (with the family's prior-probability bias), what is refused, and a real `detflow train`."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # focal-loss prior π = 0.01


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=8, image_size=64, seed=3,
                              num_classes=4, val_fraction=0.25)


def _coco_checkpoint(name: str, out: Path, seed: int = 1234) -> tuple[Path, dict[str, torch.Tensor]]:
    """An 80-class checkpoint of ``name`` written like `detflow models convert` does, with weights
    drawn from ``seed`` (so they differ from a fresh model's); returns it and its state dict."""
    import detmodels
    from detflow.cli.models import write_checkpoint_dir

    torch.manual_seed(seed)
    model = detmodels.create_model(name, num_classes=80)
    with torch.no_grad():  # make the class bias distinct from the prior: a copied bias would show
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point and "running" not in key:
                value.add_(0.01 * torch.randn_like(value))
    entry = detmodels.get_model_entry(name)
    path = write_checkpoint_dir(model, out, model_name=name, input_size=entry.input_size)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name,cls_prefix,backbone_prefix", [
    ("rtmdet_tiny", "bbox_head.rtm_cls.", "backbone."),
    ("yolov6_n", "head.cls_preds.", "backbone."),
])
def test_load_pretrained_keeps_backbone_and_reinitialises_class_predictors(tmp_path, name, cls_prefix,
                                                                         backbone_prefix):
    import detmodels
    from detflow.train.finetune import load_pretrained

    ckpt, coco = _coco_checkpoint(name, tmp_path / "coco80")
    torch.manual_seed(0)
    model = detmodels.create_model(name, num_classes=4)
    report = load_pretrained(model, ckpt, model_name=name)
    own = model.state_dict()

    backbone = [k for k in own if k.startswith(backbone_prefix) and own[k].dtype.is_floating_point]
    assert backbone and all(torch.equal(own[k], coco[k]) for k in backbone)
    cls = [k for k in own if k.startswith(cls_prefix)]
    assert len(cls) == 6 and sorted(s.name for s in report.reinitialised) == sorted(cls)
    for k in cls:
        assert own[k].shape[0] == 4 and coco[k].shape[0] == 80
    for k in (k for k in cls if k.endswith(".bias")):  # the fresh module's focal-loss prior, not zero, not copied
        assert torch.allclose(own[k], torch.full((4,), PRIOR_BIAS))
    assert report.source_model == name and (report.source_classes, report.num_classes) == (80, 4)
    assert len(report.loaded) == report.total - 6 and not report.missing and not report.unexpected
    group = cls_prefix + "*"
    assert report.lines() == [f"pretrained: loaded {report.total - 6}/{report.total} tensors from {ckpt}; "
                              f"re-initialised 6 class-dependent tensors ({group}: 80 → 4 classes)"]
    data = report.to_dict()
    assert data["skipped"][0]["checkpoint_shape"][0] == 80 and json.dumps(data)


@pytest.mark.parametrize("name,group", [("spinenet_49s", "head.cls_pred.*"), ("yolov3_asff", "heads.*.pred.*")])
def test_class_predictors_with_anchors_are_recognised(name, group):
    """RetinaNet (9 anchors × C) and YOLOv3-ASFF (4 slots × (5 + C)) class-dependent outputs."""
    import detmodels
    from detflow.train.finetune import load_pretrained

    coco = detmodels.create_model(name, num_classes=80).state_dict()
    model = detmodels.create_model(name, num_classes=4)
    report = load_pretrained(model, coco, model_name=name, source_model=name, source_classes=80)
    assert report.reinitialised and all(s.class_dependent for s in report.skipped)
    assert f"({group}: 80 → 4 classes)" in report.lines()[0]


def test_other_shapes_are_reported_apart_from_class_predictors():
    import detmodels
    from detflow.train.finetune import load_pretrained

    coco = detmodels.create_model("rtmdet_tiny", num_classes=80).state_dict()
    model = detmodels.create_model("rtmdet_tiny", num_classes=4, neck=detmodels.RTMDetNeckOptions(expand_ratio=0.75))
    report = load_pretrained(model, coco, model_name="rtmdet_tiny", source_model="rtmdet_tiny", source_classes=80)
    lines = report.lines()
    assert len(report.reinitialised) == 6 and len(report.skipped) > 6
    assert len(lines) == 2 and lines[1].startswith(f"pretrained: kept {len(report.skipped) - 6} tensors of another shape")
    assert "neck." in lines[1] and "rtm_cls" not in lines[1]


@pytest.mark.parametrize("source", ["yolov6_n", "rtmdet_s"])
def test_checkpoint_of_another_model_is_refused(tmp_path, source):
    import detmodels
    from detflow.errors import UserInputError
    from detflow.train.finetune import load_pretrained

    ckpt, _ = _coco_checkpoint(source, tmp_path / source)
    model = detmodels.create_model("rtmdet_tiny", num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserInputError) as info:
        load_pretrained(model, ckpt, model_name="rtmdet_tiny")
    message = str(info.value)
    assert "\n" not in message and str(ckpt) in message
    assert f"'{source}'" in message and "'rtmdet_tiny'" in message and "/476 tensors" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded


def test_log_report_writes_every_line(capsys):
    import detmodels
    from detflow.train.finetune import load_pretrained, log_report

    coco = detmodels.create_model("rtmdet_tiny", num_classes=80).state_dict()
    coco["extra.weight"] = torch.zeros(1)
    del coco["backbone.stem.0.conv.weight"]
    report = load_pretrained(detmodels.create_model("rtmdet_tiny", num_classes=4), coco, source_classes=80)
    log_report(report, logger=None)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pretrained: loaded 469/476") and "bbox_head.rtm_cls.*" in out[0]
    assert out[1] == "pretrained: kept 1 tensors the checkpoint lacks as initialised (backbone.stem.*.conv.*)"
    assert out[2] == "pretrained: ignored 1 checkpoint tensors the model lacks (extra.*)"


def _train_config(tmp_path: Path, synth, pretrained: Path, tiny_rtmdet_base: dict) -> Path:
    import yaml

    cfg = dict(tiny_rtmdet_base, name="finetune")
    cfg["model"] = {"name": "rtmdet_tiny", "pretrained": str(pretrained)}
    cfg["data"] = {"train": {"annotations": str(synth.train_json), "images": str(synth.images_dir)},
                   "val": {"annotations": str(synth.val_json), "images": str(synth.images_dir)}, "image_size": 64}
    cfg["train"] = {**cfg["train"], "epochs": 1, "max_steps_per_epoch": 2}
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_refuses_checkpoint_of_another_family_before_starting(tmp_path, synth, cli_env, tiny_rtmdet_base):
    ckpt, _ = _coco_checkpoint("yolov6_n", tmp_path / "yolov6_n_coco")
    cfg = _train_config(tmp_path, synth, ckpt, tiny_rtmdet_base)
    proc = subprocess.run([sys.executable, "-m", "detflow", "train", str(cfg)], env=cli_env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and str(ckpt) in err[0] and "'yolov6_n'" in err[0] and "'rtmdet_tiny'" in err[0]
    runs = Path(cli_env["DETFLOW_HOME"]) / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # no run directory was made


@pytest.mark.slow
def test_detflow_train_finetunes_80_class_checkpoint_on_4_classes(tmp_path, synth, cli_env, tiny_rtmdet_base):
    """Real `detflow train` (local Ray, 1 epoch of 2 steps at 64 px) from an 80-class rtmdet_tiny."""
    import detmodels
    from mlflow.tracking import MlflowClient

    from detflow.engine.checkpoint import load_checkpoint_state, read_meta

    ckpt, coco = _coco_checkpoint("rtmdet_tiny", tmp_path / "coco80")
    cfg = _train_config(tmp_path, synth, ckpt, tiny_rtmdet_base)
    proc = subprocess.run([sys.executable, "-m", "detflow", "train", str(cfg)], env=cli_env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert re.search(r"pretrained: loaded 470/476 tensors from \S*coco80; re-initialised 6 class-dependent tensors "
                     r"\(bbox_head\.rtm_cls\.\*: 80 → 4 classes\)", log), log[-3000:]

    best = re.search(r"best checkpoint: (\S+)", proc.stdout).group(1)
    assert read_meta(best)["num_classes"] == 4
    state = load_checkpoint_state(best)
    trained = state["model"]
    torch.manual_seed(7)
    fresh = detmodels.create_model("rtmdet_tiny", num_classes=4).state_dict()
    convs = [k for k in trained if k.startswith("backbone.") and trained[k].ndim == 4]
    moved = sum((trained[k] - coco[k]).abs().mean().item() for k in convs)
    from_fresh = sum((fresh[k] - coco[k]).abs().mean().item() for k in convs)
    assert moved < 0.25 * from_fresh  # started from the checkpoint's backbone (2 steps moved it ~10 %)
    assert trained["bbox_head.rtm_cls.0.weight"].shape[0] == 4

    run_id = re.search(r"MLflow run:\s+(\S+)", proc.stdout).group(1)
    client = MlflowClient(tracking_uri=f"sqlite:///{Path(cli_env['DETFLOW_HOME']).resolve() / 'mlflow.db'}")
    report = json.loads(Path(client.download_artifacts(run_id, "pretrained_load.json", str(tmp_path))).read_text())
    assert report["source_model"] == "rtmdet_tiny" and report["source_classes"] == 80 and report["num_classes"] == 4
    assert sorted(s["name"] for s in report["skipped"]) == sorted(f"bbox_head.rtm_cls.{i}.{p}" for i in range(3)
                                                                  for p in ("weight", "bias"))
