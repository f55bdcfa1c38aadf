"""``train.optimizer.name: repopt`` (docs/yolov6-quantization.md): config rules, the pre-Ray check of
the hyper-search checkpoint, the workflow field, the worker wiring without Ray, and (slow) the two
stages through ``detflow train`` on Ray."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from detflow.cli import main
from detflow.errors import ConfigError, UserInputError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=8, image_size=64, seed=5, val_fraction=0.25)


def _cfg(synth, block: str, **optimizer) -> dict:
    split = {"annotations": str(synth.train_json), "images": str(synth.images_dir)}
    return {"kind": "train", "name": f"y6-{block}", "model": {"name": "yolov6_n", "backbone": {"block": block}},
            "data": {"train": split, "image_size": 64, "filter_empty": False},
            "recipe": {"name": "yolov6", "strong_aug_off_epochs": 0},
            "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2, "seed": 0,
                      "optimizer": {"scale_lr_by_batch": False, **optimizer},
                      "schedule": {"warmup_iters": 0, "warmup_epochs": 0}},
            "scaling": {"workers": 1, "cpus_per_worker": 1}, "checkpoint": {"keep_last": 1, "max_failures": 0}}


def _parse(data: dict):
    from detflow.config import TrainConfig, parse_config

    return parse_config(TrainConfig, data)


def _checkpoint(synth, tmp_path: Path, block: str, *, random_scales: bool = True) -> Path:
    """A detflow checkpoint of yolov6_n with ``block`` (hyper-search scales drawn in [0.5, 1.5])."""
    import detmodels
    from detflow.engine.checkpoint import save_checkpoint

    cfg = _parse(_cfg(synth, block))
    torch.manual_seed(0)
    model = detmodels.create_model("yolov6_n", num_classes=4, **cfg.model.create_kwargs())
    if random_scales:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("scale3", "scale1", "scale_id")):
                    p.uniform_(0.5, 1.5)
    meta = {"model": "yolov6_n", "num_classes": 4, "category_ids": [1, 2, 3, 4], "class_names": list("abcd"),
            "epoch": 0, "metrics": {}, "image_size": 64}
    return save_checkpoint(tmp_path / f"ckpt-{block}", state={"model": model.state_dict(), "epoch": 0},
                           config=cfg, meta=meta)


def _errors(exc: pytest.ExceptionInfo) -> str:
    return "\n".join(getattr(exc.value, "errors", [str(exc.value)]))


def test_config_rules_name_scales_and_block(synth):
    with pytest.raises(ConfigError) as exc:
        _parse(_cfg(synth, "repopt", name="repopt"))
    assert "train.optimizer.repopt_scales" in _errors(exc)
    with pytest.raises(ConfigError) as exc:
        _parse(_cfg(synth, "repopt", repopt_scales="x"))
    assert "train.optimizer.name" in _errors(exc) and "'repopt'" in _errors(exc)
    with pytest.raises(ConfigError) as exc:
        _parse(_cfg(synth, "repvgg", name="repopt", repopt_scales="x"))
    assert "model.backbone.block" in _errors(exc) and "repvgg" in _errors(exc)
    bad = _cfg(synth, "repopt", name="repopt", repopt_scales="x")
    bad["model"] = {"name": "rtmdet_tiny"}
    bad["recipe"] = {"name": "rtmdet"}
    with pytest.raises(ConfigError) as exc:
        _parse(bad)
    assert "model.backbone.block" in _errors(exc)
    assert _parse(_cfg(synth, "repopt", name="repopt", repopt_scales="x")).train.optimizer.repopt_scales == "x"


def test_a_scales_checkpoint_of_a_non_hyper_search_model_is_refused_before_ray(synth, tmp_path, capsys):
    from detflow.train.repopt import check_repopt_scales

    plain = _checkpoint(synth, tmp_path, "repvgg", random_scales=False)
    cfg = _parse(_cfg(synth, "repopt", name="repopt", repopt_scales=str(plain)))
    with pytest.raises(UserInputError, match=r"train\.optimizer\.repopt_scales: .*backbone\.block 'repvgg'"):
        check_repopt_scales(cfg)
    with pytest.raises(UserInputError, match=r"train\.optimizer\.repopt_scales: .*not a detflow checkpoint"):
        check_repopt_scales(_parse(_cfg(synth, "repopt", name="repopt", repopt_scales=str(tmp_path))))
    import yaml

    path = tmp_path / "rep.yaml"
    path.write_text(yaml.safe_dump({**_cfg(synth, "repopt", name="repopt", repopt_scales=str(plain)),
                                    "storage": str(tmp_path / "runs")}))
    assert main(["train", str(path)]) == 2  # refused before Ray or MLflow start
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.optimizer.repopt_scales" in err[0] and str(plain) in err[0]


def test_a_hyper_search_run_of_another_layout_is_refused(synth, tmp_path):
    from detflow.train.repopt import check_repopt_scales

    hyper = _checkpoint(synth, tmp_path, "hyper_search")
    other = _cfg(synth, "repopt", name="repopt", repopt_scales=str(hyper))
    other["model"]["backbone"]["csp_e"] = 0.5
    with pytest.raises(UserInputError, match=r"train\.optimizer\.repopt_scales: .*expected one of yolov6_n"):
        check_repopt_scales(_parse(other))
    check_repopt_scales(_parse(_cfg(synth, "repopt", name="repopt", repopt_scales=str(hyper))))  # the right one


def test_workflow_step_takes_the_scales_from_an_upstream_step(synth, tmp_path):
    from detflow.workflows.context import StepContext
    from detflow.workflows.schema import TrainParams
    from detflow.workflows.steps.train import build_train_config

    ctx = StepContext(run_id="r1", step_id="repopt", kind="train", workflow="wf", storage=str(tmp_path / "st"),
                      inputs={"hyper": {"checkpoint": "/ckpts/hyper/best"}})
    base = _cfg(synth, "repopt")
    params = TrainParams.model_validate({"model": base["model"], "data": {"train": base["data"]["train"]},
                                         "image_size": 64, "repopt_scales": "hyper"})
    cfg = build_train_config(params, ctx)
    assert cfg.train.optimizer.name == "repopt" and cfg.train.optimizer.repopt_scales == "/ckpts/hyper/best"
    no_ref = TrainParams.model_validate({"model": base["model"], "data": {"train": base["data"]["train"]}})
    assert build_train_config(no_ref, ctx).train.optimizer.name is None


def test_worker_builds_the_repopt_model_from_the_scales_and_trains_with_repoptimizer(synth, tmp_path):
    """Without Ray: build_model initialises every RealVGG kernel from the checkpoint's scales, the loop's
    optimizer is a RepOptimizer with one mask per block, and two steps give finite losses."""
    import detmodels
    from detflow.engine.checkpoint import load_checkpoint_state
    from detflow.train.data import build_train_data
    from detflow.train.worker import _build_loop, build_model

    hyper = _checkpoint(synth, tmp_path, "hyper_search")
    cfg = _parse(_cfg(synth, "repopt", name="repopt", repopt_scales=str(hyper)))
    want = detmodels.scales_from_state_dict(load_checkpoint_state(hyper)["model"])
    torch.manual_seed(0)
    model = build_model(cfg, 4)
    assert set(model.repopt_scales) == set(want) and all(
        torch.equal(a, b) for k in want for a, b in zip(model.repopt_scales[k][:2], want[k][:2]))
    # the kernel is s3·W3 + s1·pad(W1): off-centre taps are s3·W3 with |W3| ≤ 1/√(9·in)
    s3, _, _ = want["backbone.stem"]
    w = model.backbone.stem.conv.weight
    bound = s3.reshape(-1, 1, 1) / math.sqrt(27)
    assert (w[:, :, 0, :].abs() <= bound + 1e-6).all() and (w[:, :, 0, :].abs() > 0.5 * bound).any()
    data = build_train_data(cfg, model.input_spec)
    loop = _build_loop(cfg, model, data.recipe, data.steps_per_epoch, 1, torch.device("cpu"), None, progress=False)
    assert isinstance(loop.optimizer, detmodels.RepOptimizer) and len(loop.optimizer.masks) == len(want)
    stats = loop.train_epoch(data.train_loader(0), 0).summary()
    assert math.isfinite(stats["train/loss"]) and loop.step == 2


@pytest.mark.slow
def test_hyper_search_then_repopt_through_detflow_train_on_ray(ray_session, synth, tmp_path, capsys):
    """Two real ``detflow train`` runs: a hyper-search epoch, then a RepOpt epoch whose config takes
    the first run's checkpoint. The RepOpt run trains at a tiny lr, so its kernels are still the
    scale formula's: the stem's off-centre taps within s3·U(±1/√27) and some centre taps beyond
    1/√27 (the s1·W1 term, W1 ~ U(±1/√3)) — which a default-initialised conv never has. Its MLflow
    params show the resolved optimizer repopt."""
    import yaml

    import detmodels
    from detflow.engine import checkpoint as ck

    storage = tmp_path / "runs"
    hyper_cfg = tmp_path / "hyper.yaml"
    hyper_cfg.write_text(yaml.safe_dump({**_cfg(synth, "hyper_search"), "storage": str(storage)}))
    assert main(["train", str(hyper_cfg), "--json"]) == 0
    hyper = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpoint"]
    assert ck.read_config(hyper).model.backbone.block == "hyper_search"
    rep = _cfg(synth, "repopt", name="repopt", repopt_scales=hyper, lr=1e-9)
    rep["train"]["ema"] = {"enabled": False}
    rep_cfg = tmp_path / "rep.yaml"
    rep_cfg.write_text(yaml.safe_dump({**rep, "storage": str(storage)}))
    assert main(["train", str(rep_cfg), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, cfg, meta = ck.load_checkpoint_model(result["checkpoint"])
    assert cfg.train.optimizer.name == "repopt" and cfg.train.optimizer.repopt_scales == hyper
    assert isinstance(model.backbone.stem, detmodels.RealVGGBlock) and meta["epoch"] == 0
    state = ck.load_checkpoint_state(hyper)
    s3, s1, _ = detmodels.scales_from_state_dict(state["ema"]["module"] if state.get("ema") else state["model"])[
        "backbone.stem"]
    w = model.backbone.stem.conv.weight.detach()
    off = w.clone()
    off[:, :, 1, 1] = 0
    assert (off.abs() <= s3.reshape(-1, 1, 1, 1) / math.sqrt(27) + 1e-5).all()
    assert w[:, :, 1, 1].abs().max() > 1.05 / math.sqrt(27)
    from mlflow.tracking import MlflowClient

    from detflow import tracking

    tracking.configure()
    params = MlflowClient().get_run(result["run_id"]).data.params
    assert params["resolved.recipe.optimizer.name"] == "repopt" and params["train.optimizer.name"] == "repopt"


def test_build_optimizer_repopt_needs_masks_and_masks_the_conv_gradients():
    import detmodels
    from detflow.engine.optim import build_optimizer
    from detflow.engine.specs import OptimizerSpec

    spec = OptimizerSpec(name="repopt", lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False, base_batch=16,
                         scale_lr_by_batch=False, repopt_scales="/x")
    block = detmodels.RealVGGBlock(2, 3, 2)
    with pytest.raises(ValueError, match="masks"):
        build_optimizer(block, spec, total_batch=16)
    mask = torch.full_like(block.conv.weight, 3.0)
    opt = build_optimizer(block, spec, total_batch=16, masks={block.conv.weight: mask})
    assert isinstance(opt, detmodels.RepOptimizer)
    before = block.conv.weight.detach().clone()
    block(torch.randn(2, 2, 8, 8)).sum().backward()
    grad = block.conv.weight.grad.clone()
    opt.step()
    assert torch.allclose(block.conv.weight, before - 0.1 * 3.0 * grad)


@pytest.mark.slow
def test_a_repopt_yolov6_n_quantizes_every_conv_with_ptq(tmp_path):
    """The point of RepOpt: the trained model is a plain conv net, so PT2E PTQ gives int8 weights to
    every conv of the exported graph (12 s on an idle machine, ~90 s while the CI suite runs beside it)."""
    import importlib.util

    import detmodels
    import onnx
    from detflow.quant import run_ptq

    spec = importlib.util.spec_from_file_location("conftest_deploy", Path(__file__).with_name("conftest_deploy.py"))
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    torch.manual_seed(0)
    model = detmodels.create_model("yolov6_n", num_classes=4, backbone=detmodels.YOLOv6BackboneOptions(block="repopt"))
    result = run_ptq(model.eval(), tmp_path, data=deploy.random_batches(2, 2, 64), calib_batches=2)
    assert result.metrics["quant_path"] == "pt2e"
    graph = onnx.load(str(result.onnx_path)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) > 50 and all(producers.get(n.input[1]) == "DequantizeLinear" for n in convs)
