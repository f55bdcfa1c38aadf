"""The cost objective of a SpineNet search (detflow.archsearch.cost) and the proxy → full-scale
transfer (detflow.archsearch.transfer): measured on real tiny SpineNets, exported to ONNX, timed
with onnxruntime; the transfer YAML is validated by `detflow config validate` and built."""
import dataclasses
import math

import pytest
import yaml

import detmodels
from detmodels import ScaleSettings, load_spec, save_spec, spinenet49_spec
from detflow.archsearch.cost import COSTS, measure_cost, metric_name

SIZE = 64


def _spinenet(tmp_path, scale: float, name: str):
    spec = spinenet49_spec()
    spec = dataclasses.replace(spec, name=name, scale=dataclasses.replace(spec.scale or ScaleSettings(),
                                                                          filter_size_scale=scale))
    path = save_spec(spec, tmp_path / f"{name}.yaml")
    return detmodels.create_model("spinenet", num_classes=3, spec=str(path)), path


def test_cost_of_a_tiny_spinenet_matches_detmodels_and_times_its_onnx_export(tmp_path):
    model, _ = _spinenet(tmp_path, 0.25, "tiny")
    cost = measure_cost(model, SIZE, "latency_ms", tmp_path / "work")
    assert set(cost) == set(COSTS)
    assert cost["params_M"] == detmodels.count_params(model) / 1e6
    assert cost["gmacs"] == pytest.approx(detmodels.count_macs(model, SIZE) / 1e9)
    assert math.isfinite(cost["latency_ms"]) and 0 < cost["latency_ms"] < 10_000
    onnx = tmp_path / "work" / "model.onnx"
    assert onnx.is_file() and onnx.stat().st_size > 100_000          # the weights are in the graph
    assert model.training                                              # the caller's model is left as it was


def test_cost_without_latency_exports_nothing_and_a_bigger_model_costs_more(tmp_path):
    small, _ = _spinenet(tmp_path, 0.25, "small")
    big, _ = _spinenet(tmp_path, 0.5, "big")
    a = measure_cost(small, SIZE, "gmacs", tmp_path / "a")
    b = measure_cost(big, SIZE, None, tmp_path / "b")
    assert set(a) == set(b) == {"params_M", "gmacs"}
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert b["params_M"] > a["params_M"] and b["gmacs"] > a["gmacs"]


def test_unknown_cost_names_the_value():
    with pytest.raises(ValueError, match=r"cost: expected one of params_M, gmacs, latency_ms or null, got 'flops'"):
        metric_name("flops")
    assert [metric_name(k) for k in COSTS] == ["cost/params_M", "cost/gmacs", "cost/latency_ms"]


def test_transfer_yaml_validates_and_builds_the_searched_graph_at_full_scale(tmp_path, monkeypatch, capsys):
    from detflow.archsearch.transfer import full_scale_spec, write_train_config
    from detflow.cli import main
    from detflow.config import TrainConfig, parse_config

    base = parse_config(TrainConfig, {
        "name": "base", "model": {"name": "spinenet_49s", "num_classes": 3},
        "data": {"train": {"annotations": "data/train.json", "images": "data/images"},
                 "val": {"annotations": "data/val.json", "images": "data/images"}, "image_size": 128},
        "train": {"epochs": 3, "batch_size": 2}}, "base.yaml")
    _, proxy_spec = _spinenet(tmp_path, 0.25, "arch007")             # a searched graph at proxy scale
    spec = full_scale_spec(proxy_spec, base.model.model_dump(mode="json"), tmp_path / "out" / "best_spec.yaml")
    assert load_spec(spec).scale == detmodels.SPINENET_VARIANTS["49s"].scale
    cfg_dir = tmp_path / "configs"
    out = write_train_config(base, spec, tmp_path / "out" / "best_train.yaml", "nas-best", base_dir=cfg_dir)

    monkeypatch.chdir(tmp_path / "out")                               # runs from anywhere
    assert main(["config", "validate", "best_train.yaml", "--kind", "train"]) == 0
    assert capsys.readouterr().out == "ok\n"
    data = yaml.safe_load(out.read_text())
    assert list(data)[0] == "kind" and data["kind"] == "train" and data["name"] == "nas-best"
    model = data["model"]
    assert (model["name"], model["num_classes"], model["spec"]) == ("spinenet", 3, str(spec.resolve()))
    assert data["data"]["train"] == {"annotations": str(cfg_dir / "data/train.json"),
                                     "images": str(cfg_dir / "data/images")}
    assert data["data"]["val"]["annotations"] == str(cfg_dir / "data/val.json")
    assert data["train"] == {"epochs": 3, "batch_size": 2} and data["data"]["image_size"] == 128
    full = parse_config(TrainConfig, data, str(out)).model.build(3)
    # the same graph as SpineNet-49 at 49S's scale: exactly spinenet_49s's parameter count
    assert detmodels.count_params(full) == detmodels.count_params(detmodels.create_model("spinenet_49s", num_classes=3))
