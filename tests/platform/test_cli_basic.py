"""The `detflow` entry point: --help everywhere (with an example), --version, exit codes, eval/models/ui."""
from __future__ import annotations

import json

import pytest
import torch
import typer
import yaml
from torch import nn

import detflow
import detmodels
from detflow.cli import app, main
from detmodels import registry, weights


def _command_paths(cmd, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
        for name, sub in cmd.commands.items():
            paths.extend(_command_paths(sub, prefix + (name,)))
    return paths


COMMANDS = _command_paths(typer.main.get_command(app))


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "detflow")
def test_help_on_every_command_has_an_example(path, capsys):
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out and "Example" in out


def test_my_commands_are_registered():
    assert {("eval",), ("ui",), ("config", "validate"), ("models", "list"), ("models", "convert")} <= set(COMMANDS)


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"detflow {detflow.__version__}"


@pytest.mark.parametrize("args", [
    ["no-such-command"],
    ["eval", "--pred", "x.json"],                              # missing required option
    ["eval", "--gt", "missing.json", "--pred", "x.json"],      # unreadable file
    ["config", "validate"],                                    # missing argument
    ["models", "convert", "missing.pth", "--model", "nope", "--out", "o"],
    ["ui", "--port", "0"],                                     # out of range
    ["models", "list", "no_such_model", "--no-flops"],
])
def test_bad_input_exits_2(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert capsys.readouterr().err.strip()


# ---------------------------------------------------------------- eval
def _tiny_gt(path):
    data = {"images": [{"id": 1, "file_name": "1.jpg", "height": 64, "width": 64}],
            "categories": [{"id": 3, "name": "dot"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400,
                             "iscrowd": 0, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}]}
    path.write_text(json.dumps(data))
    return path


def test_eval_json_and_table(tmp_path, capsys):
    gt = _tiny_gt(tmp_path / "gt.json")
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps([{"image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "score": 0.9}]))
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["per_class"] == {"dot": pytest.approx(1.0)}
    assert {"AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"} <= set(metrics)
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "--plot-pr", str(tmp_path / "pr.png")]) == 0
    out = capsys.readouterr().out
    assert "AP50" in out and "dot" in out and (tmp_path / "pr.png").is_file()
    pred.write_text("[]")
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["note"] == "no predictions"
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "--iou-type", "keypoints"]) == 2


# ---------------------------------------------------------------- models
class _TinyNet(nn.Module):
    def __init__(self, num_classes: int = 80):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.cls = nn.Conv2d(4, num_classes, 1)

    def forward(self, x):
        return {"cls": [self.cls(self.conv(x))]}


@pytest.fixture
def tiny_model(monkeypatch):
    detmodels.list_models()  # real families first, so they are not registered inside the patch
    monkeypatch.setitem(registry._REGISTRY, "clitest_tiny", registry.ModelEntry("clitest_tiny", "clitest", "bbox", 32, _TinyNet))
    return "clitest_tiny"


def test_models_list_measures_params_and_flops(tiny_model, capsys):
    assert main(["models", "list", "--family", "clitest", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    params = 3 * 4 * 9 + 4 * 80 + 80
    macs = 32 * 32 * (4 * 3 * 9 + 80 * 4)  # conv 3x3 (no bias) + 1x1 head at 32x32
    assert row["params_m"] == pytest.approx(params / 1e6, abs=1e-3)
    assert row["macs"] == macs and row["gflops"] == pytest.approx(2 * macs / 1e9, abs=1e-4)
    assert (row["family"], row["task"], row["input_size"]) == ("clitest", "bbox", 32)
    assert main(["models", "list", "--family", "clitest", "--no-flops"]) == 0
    out = capsys.readouterr().out
    assert "clitest_tiny" in out and "GFLOPs" not in out


def test_models_convert_writes_checkpoint_dir(tiny_model, tmp_path, monkeypatch, capsys):
    def fake_loader(model, path):
        model.load_state_dict(torch.load(path, weights_only=True))
        return model

    monkeypatch.setitem(weights._SOURCES, "clitest", fake_loader)
    reference = _TinyNet()
    torch.save(reference.state_dict(), tmp_path / "official.pth")
    out = tmp_path / "ckpt"
    code = main(["models", "convert", str(tmp_path / "official.pth"), "--model", tiny_model,
                 "--out", str(out), "--source", "clitest"])
    assert code == 0, capsys.readouterr().err
    state = torch.load(out / "model.pt", weights_only=True)
    assert torch.equal(state["model"]["conv.weight"], reference.conv.weight) and state["ema"] is None
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"] == tiny_model and meta["num_classes"] == 80 and len(meta["category_ids"]) == 80
    assert meta["category_ids"][-1] == 90 and meta["class_names"][0] == "person" and meta["source"] == "clitest"
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"] == {**cfg["model"], "name": tiny_model, "num_classes": 80}
    assert main(["models", "convert", str(tmp_path / "official.pth"), "--model", tiny_model,
                 "--out", str(out), "--source", "nope"]) == 2


# ---------------------------------------------------------------- ui
def test_ui_command_binds_loopback_on_the_detflow_store(tmp_path, monkeypatch):
    from detflow.cli.server import ui_command_line

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    try:
        cmd = ui_command_line("127.0.0.1", 5001)
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5001"
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cmd[cmd.index("--default-artifact-root") + 1] == (tmp_path / "mlartifacts").as_uri()
