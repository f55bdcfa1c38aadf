"""Partial PTQ (YOLOv6 tools/partial_quantization): per-layer sensitivity ranks a conv whose input range an
outlier channel dominates first, ``keep_float`` keeps exactly the top convs float in the int8 ONNX,
``sensitivity.json`` says why, and bad ``keep_float`` values are one-line errors (exit 2 in the CLI)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import detmodels
from detflow.cli import main
from detflow.errors import UserInputError
from detflow.quant import layer_sensitivity, quantizable_convs, run_ptq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from checkpoints import detecting_rtmdet_tiny  # noqa: E402

_spec = importlib.util.spec_from_file_location("conftest_deploy", Path(__file__).with_name("conftest_deploy.py"))
deploy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy)

OUTLIER_CONV = "stem.2.conv"  # 16→16 3×3: the only conv of that weight shape in the tiny detector


def outlier_model() -> torch.nn.Module:
    """The tiny detector (re-parameterised) whose ``stem.1`` emits one channel ~100× the others that
    ``stem.2`` does not read: fp32 outputs are untouched, but ``stem.2``'s per-tensor input range is
    the outlier's, so 8 bits leave the other 15 channels a handful of levels."""
    model = detmodels.reparameterize_model(deploy.tiny_model())
    convs = dict(model.named_modules())
    with torch.no_grad():
        convs["stem.1.conv"].weight[0] *= 100.0
        convs["stem.1.conv"].bias[0] = 50.0
        convs[OUTLIER_CONV].weight[:, 0] = 0.0
    return model


def _calib() -> list[torch.Tensor]:
    return [b[0] for b in deploy.random_batches()]


def _float_convs(path) -> list[list[int]]:
    """Weight shapes of the convs whose weight does not come from a DequantizeLinear (float convs)."""
    graph = onnx.load(str(path)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    return [shapes.get(n.input[1]) for n in graph.node
            if n.op_type == "Conv" and producers.get(n.input[1]) != "DequantizeLinear"]


def test_the_outlier_conv_ranks_first():
    calib = _calib()
    clean = detmodels.reparameterize_model(deploy.tiny_model())
    names = quantizable_convs(clean, [])
    assert names == ["stem.0.conv", "stem.1.conv", "stem.2.conv", "down.conv", "cls.0", "cls.1", "box.0", "box.1"]
    before = {s.name: s.sqnr_db for s in layer_sensitivity(clean, calib, names)}
    ranked = layer_sensitivity(outlier_model(), calib, names)
    assert ranked[0].name == OUTLIER_CONV
    assert ranked[0].sqnr_db < ranked[1].sqnr_db - 20  # dB: far ahead of the next layer
    assert ranked[0].sqnr_db < before[OUTLIER_CONV] - 20  # and the outlier is what did it
    assert [s.nsr for s in ranked] == sorted((s.nsr for s in ranked), reverse=True)
    assert quantizable_convs(clean, ["cls", "box.1"]) == names[:4] + ["box.0"]


def test_keep_float_keeps_the_top_convs_float_and_writes_the_report(tmp_path):
    data = deploy.random_batches()
    plain = run_ptq(outlier_model(), tmp_path / "plain", data=data, calib_batches=3)
    partial = run_ptq(outlier_model(), tmp_path / "partial", data=data, calib_batches=3, keep_float=2)
    assert _float_convs(plain.onnx_path) == [] and not (tmp_path / "plain" / "sensitivity.json").exists()
    assert plain.metrics["keep_float"] == 0 and "kept_float" not in plain.metrics
    m = partial.metrics
    kept = m["kept_float"]
    assert len(kept) == 2 and kept[0] == OUTLIER_CONV and set(kept) <= set(m["float_modules"])
    floats = _float_convs(partial.onnx_path)
    assert len(floats) == 2 and [16, 16, 3, 3] in floats
    assert plain.metrics["qdq_nodes"]["DequantizeLinear"] > m["qdq_nodes"]["DequantizeLinear"]
    # the point of it: the int8 graph moves less from fp32 with the outlier conv in float (the PT2E histogram
    # observer already clips part of the outlier, so plain PTQ is not hopeless here: 0.0028 vs 0.0018)
    assert m["fp32_score_mean_abs_diff"] < 0.8 * plain.metrics["fp32_score_mean_abs_diff"]

    report = json.loads((tmp_path / "partial" / "sensitivity.json").read_text())
    assert report["keep_float"] == 2 and report["kept_float"] == kept and report["calib_batches"] == 3
    assert "sqnr_db" in report["metric"] and "lower = more sensitive" in report["metric"]
    layers = report["layers"]
    assert [r["rank"] for r in layers] == list(range(1, 9)) and [r["name"] for r in layers[:2]] == kept
    assert sorted(r["name"] for r in layers) == sorted(quantizable_convs(outlier_model(), []))
    assert all(np.isfinite(r["sqnr_db"]) and r["nsr"] >= 0 for r in layers)
    assert [r["sqnr_db"] for r in layers] == sorted(r["sqnr_db"] for r in layers)
    assert m["sensitivity_top"][0] == {"name": OUTLIER_CONV, "sqnr_db": layers[0]["sqnr_db"]}
    meta = json.loads((tmp_path / "partial" / "meta.json").read_text())
    assert meta["quantization"]["kept_float"] == kept


@pytest.mark.parametrize("keep, skip, needle", [
    (9, (), "keep_float: 9 is more than the 8 quantizable convs"),
    (7, ("cls.*",), "keep_float: 7 is more than the 6 quantizable convs"),  # skip_layers are float already
    (-1, (), "keep_float: expected >= 0"),
    (1.5, (), "keep_float: expected a whole number of layers, got 1.5"),
])
def test_bad_keep_float_is_one_line_and_writes_nothing(keep, skip, needle, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserInputError) as err:
        run_ptq(deploy.tiny_model(), out, data=deploy.random_batches(), keep_float=keep, skip_layers=skip)
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 1
    assert not out.exists()


def test_ptq_step_params_take_keep_float():
    from pydantic import ValidationError

    from detflow.workflows.schema import PTQParams

    assert PTQParams(checkpoint="train").keep_float == 0
    assert PTQParams(checkpoint="train", keep_float=3).keep_float == 3
    with pytest.raises(ValidationError, match="keep_float"):
        PTQParams(checkpoint="train", keep_float=-2)


# ----------------------------------------------------------------------------- detflow export --keep-float
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=6, image_size=64, seed=1, val_fraction=0.34)


@pytest.fixture(scope="module")
def ckpt(synth, tmp_path_factory) -> Path:
    return Path(detecting_rtmdet_tiny(synth, tmp_path_factory.mktemp("ckpt") / "best"))


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_export_int8_keep_float(ckpt, synth, tmp_path, capsys):
    out = tmp_path / "int8"
    code = main(["export", str(ckpt), "--format", "int8", "--calib", str(synth.train_json), "--calib-batches", "1",
                 "--keep-float", "3", "--input-size", "32", "--out", str(out), "--json"])
    assert code == 0
    manifest = json.loads(capsys.readouterr().out)
    report = json.loads((out / "sensitivity.json").read_text())
    assert manifest["keep_float"] == 3 and manifest["kept_float"] == report["kept_float"]
    assert [r["name"] for r in report["layers"][:3]] == report["kept_float"]
    assert len(_float_convs(out / "model.int8.onnx")) == 3


@pytest.mark.parametrize("args, needle", [
    (["--format", "int8", "--calib", "{calib}", "--keep-float", "1000"], "keep_float: 1000 is more than the"),
    (["--format", "int8", "--calib", "{calib}", "--keep-float", "-1"], "--keep-float -1: expected >= 0"),
    (["--format", "onnx", "--keep-float", "2"], "--keep-float 2: only an int8 export"),
])
def test_export_bad_keep_float_exits_2(args, needle, ckpt, synth, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.format(calib=synth.train_json) for a in args]
    assert main(["export", str(ckpt), *argv, "--calib-batches", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_keep_float_on_yolov6_n_names_its_fused_repvgg_convs(tmp_path):
    """The ranked names are the re-parameterised model's (``….fused`` RepVGG convs), which PT2E matches."""
    result = run_ptq(deploy.yolov6_n(), tmp_path, data=deploy.box_batches(batch=2), calib_batches=1, keep_float=3)
    m = result.metrics
    assert m["quantizable_convs"] == 69 and len(m["kept_float"]) == 3
    assert all(name.endswith(".fused") or ".cls_preds." in name or ".reg_preds." in name for name in m["kept_float"])
    assert len(_float_convs(result.onnx_path)) == 3
    assert m["sensitivity_top"][0]["sqnr_db"] < m["sensitivity_top"][-1]["sqnr_db"] < 300
