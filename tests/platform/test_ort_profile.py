"""``detflow bench ort-profile``: rtmdet_tiny (random init, 128 px) exported by detflow to fp32 ONNX and to an
int8 PTQ QDQ graph (its stem conv skipped); the int8 graph ORT runs holds QLinearConv and the fp32 one no int8 op,
op shares sum to 100 %, every float node of the int8 graph says why (the skipped conv, the float prediction convs,
a partial-PTQ keep_float conv of the small test detector), and bad paths are one-line errors, exit 2."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import detmodels
from detflow.bench.float_reasons import INT8_OPS
from detflow.bench.ort_profile import profile_pair
from detflow.cli import main
from detflow.export.onnx import export_onnx
from detflow.quant import run_ptq

_spec = importlib.util.spec_from_file_location("conftest_deploy", Path(__file__).with_name("conftest_deploy.py"))
deploy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy)

SIZE = 128
SKIPPED = "backbone.stem.0"


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """(fp32 export dir, int8 PTQ dir) of one random-init rtmdet_tiny; ``SKIPPED`` stays float."""
    root = tmp_path_factory.mktemp("ortprof")
    torch.manual_seed(0)
    model = detmodels.create_model("rtmdet_tiny", num_classes=3).eval()
    gen = torch.Generator().manual_seed(0)
    calib = [(torch.rand(2, 3, SIZE, SIZE, generator=gen) * 255, [{}] * 2) for _ in range(2)]
    export_onnx(model, root / "fp32", input_size=SIZE)
    run_ptq(model, root / "int8", data=calib, calib_batches=2, image_size=SIZE, skip_layers=[SKIPPED])
    return root / "fp32", root / "int8"


@pytest.fixture(scope="module")
def report(graphs):
    fp32, int8 = graphs
    return profile_pair(fp32, int8, iters=3, warmup=1)


def test_int8_graph_runs_qlinearconv_and_fp32_has_no_int8_op(report):
    int8_ops = {row[0] for row in report.int8.ops()}
    fp32_ops = {row[0] for row in report.fp32.ops()}
    assert "QLinearConv" in int8_ops
    assert not fp32_ops & (INT8_OPS | {"QuantizeLinear", "DequantizeLinear"})
    assert {n.kind for n in report.fp32.nodes} == {"float"}
    assert report.int8.kind_shares()["int8"] > 0
    assert report.fp32.latency_ms > 0 and report.int8.latency_ms > 0


def test_shares_sum_to_100(report):
    for graph in (report.fp32, report.int8):
        assert sum(row[3] for row in graph.ops()) == pytest.approx(100.0, abs=1e-6)
        assert sum(graph.kind_shares().values()) == pytest.approx(100.0, abs=1e-6)
        assert graph.kernel_ms == pytest.approx(sum(row[2] for row in graph.ops()))


def test_float_nodes_say_why(report):
    skipped = [m for m in report.float_convs if m.startswith(SKIPPED + ".")]
    assert skipped and report.float_convs[skipped[0]].startswith("skip_layers")
    assert sum(why.startswith("float output") for why in report.float_convs.values()) == 6  # cls + reg × 3 levels
    float_nodes = [n for n in report.int8.nodes if n.kind == "float"]
    assert float_nodes and all(n.reason for n in float_nodes)
    assert any(n.op == "Conv" and "skip_layers" in n.reason for n in float_nodes)
    assert any(n.reason.startswith("head decode") for n in float_nodes)
    assert not any(n.reason for n in report.int8.nodes if n.kind != "float")
    text = report.to_markdown(top=5)
    assert "QLinearConv" in text and "in the artifact's float_modules" in text


def test_keep_float_convs_are_named_with_their_sensitivity(tmp_path):
    model = deploy.tiny_model()
    export_onnx(model, tmp_path / "fp32", input_size=64)
    kept = run_ptq(model, tmp_path / "int8", data=deploy.random_batches(), calib_batches=2,
                   keep_float=1).metrics["kept_float"]
    report = profile_pair(tmp_path / "fp32", tmp_path / "int8", iters=2, warmup=1)
    assert report.float_convs[kept[0]].startswith("keep_float: partial PTQ kept it float (sensitivity rank 1")
    assert any(n.op == "Conv" and n.reason.startswith(f"{kept[0]}: keep_float") for n in report.int8.nodes)


def test_cli_json(graphs, capsys):
    fp32, int8 = graphs
    assert main(["bench", "ort-profile", str(fp32), str(int8 / "model.int8.onnx"), "--iters", "2",
                 "--top", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["int8"]["top_nodes"]) == 4
    assert out["speedup"] == pytest.approx(out["fp32"]["latency_ms"] / out["int8"]["latency_ms"])


def test_cli_bad_path(tmp_path, graphs, capsys):
    fp32, _ = graphs
    missing = tmp_path / "nope.onnx"
    assert main(["bench", "ort-profile", str(fp32), str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    assert main(["bench", "ort-profile", str(bad), str(fp32)]) == 2
    assert str(bad) in capsys.readouterr().err
