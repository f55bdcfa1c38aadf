"""``detflow models pull`` and ``model.pretrained`` forms (docs/weights.md), against a local HTTP
server on 127.0.0.1 that honours ``Range`` requests: no internet needed.

The served file is an official-format (mmdetection layout) rtmdet_tiny checkpoint made here from
our own perturbed weights; a private release table (``DETFLOW_WEIGHTS_CATALOG``) publishes its
digest prefix the way MMDetection does, and ``DETFLOW_WEIGHTS_BASE_URL`` points at the server.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

import detmodels
from detflow.cli import main
from detflow.engine.checkpoint import is_checkpoint, load_checkpoint_state
from detflow.errors import UserInputError
from detflow.weights import catalog
from detflow.weights.download import part_path
from detflow.weights.pull import BASE_URL_ENV, pull
from detflow.weights.resolve import resolve_pretrained
from detmodels.families.rtmdet_weights import detmodels_to_mmdet_key

FILE = "rtmdet_tiny_test_coco.pth"


# --------------------------------------------------------------------------- a local release server
class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /NAME from ``server.files``; ``Range: bytes=N-`` answered 206 (or 416 past the end)
    unless ``server.ranges`` is off; every request's path and Range header logged."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        body = srv.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        ctype = srv.content_type
        start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng and srv.ranges and not srv.range_from_zero else 0
        if start >= len(body) and rng and srv.ranges:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        partial = bool(start) or (rng is not None and srv.range_from_zero)
        self.send_response(206 if partial else 200)
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.ranges, srv.content_type = {}, [], True, "application/octet-stream"
    srv.range_from_zero = False  # answer any Range with 206 from byte 0 (a range not asked for)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _mmdet_bytes(model_name: str, tmp: Path, seed: int = 0) -> tuple[bytes, dict]:
    """An 80-class ``model_name`` saved in mmdetection's layout (perturbed weights); (bytes, our state)."""
    torch.manual_seed(seed)
    model = detmodels.create_model(model_name, num_classes=80)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn_like(v) * 0.01)
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp / f"{model_name}-{seed}.pth"
    torch.save({"meta": {}, "state_dict": {detmodels_to_mmdet_key(k): v for k, v in ours.items()}}, path)
    return path.read_bytes(), ours


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> tuple[bytes, dict, str]:
    """(file bytes, our state dict, sha256) of an official-format rtmdet_tiny checkpoint."""
    data, ours = _mmdet_bytes("rtmdet_tiny", tmp_path_factory.mktemp("official"))
    return data, ours, hashlib.sha256(data).hexdigest()


def _table(path: Path, **entry) -> Path:
    """A one-entry release table for rtmdet_tiny (the real URL is never reached: the base URL is set)."""
    row = {"model": "rtmdet_tiny", "source": "mmdet", "file": FILE, "url": "https://example.invalid/" + FILE, **entry}
    path.write_text(yaml.safe_dump({"releases": [row, {"model": "spinenet_49", "source": "none",
                                                       "note": "TensorFlow checkpoints only"}]}))
    return path


@pytest.fixture()
def home(tmp_path, monkeypatch, server, official) -> Path:
    """A private DETFLOW_HOME, the server as the weights mirror and a table publishing the file's
    digest prefix (as MMDetection's ``-<8 hex>`` names do)."""
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(BASE_URL_ENV, server.base)
    monkeypatch.setenv(catalog.CATALOG_ENV, str(_table(tmp_path / "table.yaml", sha256_prefix=official[2][:8])))
    server.files[FILE] = official[0]
    return tmp_path / "home"


def _left(home: Path) -> list[str]:
    """What a failed pull left in the weights folder (the manifest of earlier pulls aside)."""
    wdir = home / "weights"
    return sorted(p.name for p in wdir.iterdir() if p.name != "manifest.json") if wdir.is_dir() else []


def _assert_official_weights(ckpt: Path, ours: dict) -> None:
    state = load_checkpoint_state(ckpt)["model"]
    for key in ("backbone.stem.0.conv.weight", "neck.out_convs.2.norm.running_mean", "bbox_head.rtm_cls.0.weight"):
        assert torch.equal(state[key], ours[key]), key


# --------------------------------------------------------------------------- the table
def test_table_has_every_registered_variant_and_honest_checksums():
    rows = catalog.load_catalog(catalog.CATALOG_FILE)
    assert {r.model for r in rows} == set(detmodels.list_models())
    for r in rows:
        if r.source == "mmdet":  # the published prefix is the file name's -<8 hex>, the URL ends in the file
            assert r.file.endswith(f"-{r.sha256_prefix}.pth") and r.url.endswith("/" + r.file), r
            assert r.url.startswith("https://download.openmmlab.com/mmdetection/v3.0/rtmdet/"), r
        elif r.source == "yolov6":
            assert r.url == f"https://github.com/meituan/YOLOv6/releases/download/0.4.0/{r.file}" and r.sha256 is None
        elif r.source == "asff":
            assert r.sha256 is None and r.sha256_prefix is None and "drive.google.com" in r.page
        else:
            assert r.model.startswith("spinenet") and not r.available and r.note
    assert catalog.has_official_weights("yolov6_n") and not catalog.has_official_weights("spinenet_49")


def test_catalog_import_is_light():
    code = "import sys, detflow.weights as w; w.releases_for('rtmdet_tiny'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_table_entry_is_one_line(tmp_path):
    bad = _table(tmp_path / "t.yaml", file="../escape.pth")
    with pytest.raises(UserInputError, match=r"t\.yaml: releases\[0\]\.file: expected a plain file name"):
        catalog.load_catalog(bad)


# --------------------------------------------------------------------------- pull
def test_pull_good_file_cli_then_train_config_loads_it(home, server, official, cli_env, tmp_path):
    env = {**cli_env, "DETFLOW_HOME": str(home), BASE_URL_ENV: server.base,
           catalog.CATALOG_ENV: str(tmp_path / "table.yaml")}
    run = subprocess.run([sys.executable, "-m", "detflow", "models", "pull", "rtmdet_tiny"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    ckpt = Path(run.stdout.strip())
    assert ckpt == home / "weights" / "rtmdet_tiny-mmdet" and is_checkpoint(ckpt)
    _assert_official_weights(ckpt, official[1])
    manifest = json.loads((home / "weights" / "manifest.json").read_text())
    assert manifest[FILE]["sha256"] == official[2] and manifest[FILE]["verified"] == "published prefix"
    assert (home / "weights" / FILE).read_bytes() == official[0]
    # already pulled: the path again, nothing downloaded
    n = len(server.requests)
    again = subprocess.run([sys.executable, "-m", "detflow", "models", "pull", "rtmdet_tiny"],
                           env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.strip() == str(ckpt) and len(server.requests) == n
    # a training config naming it: resolved, and the model built from it carries the official weights
    from detflow.config.train import TrainConfig
    from detflow.train.runner import resolve_train_config
    from detflow.train.worker import build_model

    cfg = resolve_train_config(TrainConfig.model_validate(
        {"name": "ft", "model": {"name": "rtmdet_tiny", "pretrained": str(ckpt), "num_classes": 80},
         "data": {"train": {"annotations": "a.json", "images": "img"}}}))
    model = build_model(cfg, 80)
    assert torch.equal(model.state_dict()["backbone.stem.0.conv.weight"], official[1]["backbone.stem.0.conv.weight"])


@pytest.mark.parametrize("how", ["pinned", "published prefix"])
def test_wrong_checksum_exit_2_nothing_left(how, home, tmp_path, monkeypatch, capsys, official):
    args = ["models", "pull", "rtmdet_tiny"]
    if how == "pinned":
        args += ["--sha256", "0" * 64]
    else:
        monkeypatch.setenv(catalog.CATALOG_ENV, str(_table(tmp_path / "t2.yaml", sha256_prefix="deadbeef")))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and FILE in err and official[2] in err
    assert ("0" * 64 if how == "pinned" else "deadbeef") in err
    assert _left(home) == []


def test_resumed_partial_download(home, server, official):
    data = official[0]
    wdir = home / "weights"
    wdir.mkdir(parents=True)
    half = len(data) // 2
    part_path(wdir / FILE).write_bytes(data[:half])
    ckpt = pull("rtmdet_tiny", progress=False)
    assert (f"/{FILE}", f"bytes={half}-") in server.requests
    assert (wdir / FILE).read_bytes() == data and not part_path(wdir / FILE).exists()
    _assert_official_weights(ckpt, official[1])


def test_server_without_ranges_restarts_and_a_complete_part_is_kept(home, server, official):
    wdir = home / "weights"
    wdir.mkdir(parents=True)
    server.ranges = False  # answers 200 with the whole file: the part is rewritten from byte 0
    part_path(wdir / FILE).write_bytes(b"garbage that is not the file's first half")
    pull("rtmdet_tiny", progress=False)
    assert (wdir / FILE).read_bytes() == official[0]
    # a part that already holds the whole file: 416 from the server, verified as is
    (wdir / FILE).rename(part_path(wdir / FILE))
    server.ranges = True
    import shutil

    shutil.rmtree(wdir / "rtmdet_tiny-mmdet")
    pull("rtmdet_tiny", progress=False)
    assert server.requests[-1] == (f"/{FILE}", f"bytes={len(official[0])}-") and (wdir / FILE).is_file()
    # a 206 that does not start where the part ends: asked again without Range, written from byte 0
    shutil.rmtree(wdir / "rtmdet_tiny-mmdet")
    (wdir / FILE).unlink()
    part_path(wdir / FILE).write_bytes(official[0][:100])
    server.range_from_zero = True
    pull("rtmdet_tiny", progress=False)
    assert server.requests[-2:] == [(f"/{FILE}", "bytes=100-"), (f"/{FILE}", None)]
    assert (wdir / FILE).read_bytes() == official[0]


def test_file_of_another_model_exit_2_nothing_left(home, server, tmp_path, monkeypatch, capsys):
    data, _ = _mmdet_bytes("yolov6_n", tmp_path)  # yolov6_n weights served as rtmdet_tiny's file
    server.files[FILE] = data
    digest = hashlib.sha256(data).hexdigest()
    monkeypatch.setenv(catalog.CATALOG_ENV, str(_table(tmp_path / "t3.yaml", sha256_prefix=digest[:8])))
    assert main(["models", "pull", "rtmdet_tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{FILE}: cannot load as mmdet weights of rtmdet_tiny" in err
    assert _left(home) == []
    assert not (home / "weights" / "manifest.json").exists()  # a refused file is never trusted


def test_model_without_release_exit_2(home, capsys):
    assert main(["models", "pull", "spinenet_49"]) == 2
    assert "spinenet_49: no official PyTorch weights" in capsys.readouterr().err
    assert main(["models", "pull", "rtmdet_tiny", "--source", "yolov6"]) == 2
    assert "no official yolov6 release (available: mmdet)" in capsys.readouterr().err
    assert _left(home) == []


def test_trust_on_first_use_then_verified(home, server, tmp_path, monkeypatch, official):
    monkeypatch.setenv(catalog.CATALOG_ENV, str(_table(tmp_path / "t4.yaml")))  # no checksum published
    notices: list[str] = []
    pull("rtmdet_tiny", progress=False, notify=notices.append)
    assert len(notices) == 1 and official[2] in notices[0] and "manifest.json" in notices[0]
    manifest = json.loads((home / "weights" / "manifest.json").read_text())
    assert manifest[FILE] == {**manifest[FILE], "sha256": official[2], "verified": "trust on first use"}
    # the mirror now serves another file: a later pull refuses it against the recorded digest
    import shutil

    shutil.rmtree(home / "weights" / "rtmdet_tiny-mmdet")
    (home / "weights" / FILE).unlink()
    server.files[FILE] = _mmdet_bytes("rtmdet_tiny", tmp_path, seed=1)[0]  # a valid file, but not the one trusted
    with pytest.raises(UserInputError, match=f"expected {official[2]}"):
        pull("rtmdet_tiny", progress=False)
    assert _left(home) == []


def test_http_errors_are_one_line(home, server, capsys):
    assert main(["models", "pull", "rtmdet_tiny", "--url", server.base + "/missing.pth"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    server.content_type = "text/html; charset=utf-8"  # e.g. a Drive confirmation page
    assert main(["models", "pull", "rtmdet_tiny"]) == 2
    assert "sent a web page, not a checkpoint" in capsys.readouterr().err
    assert _left(home) == []


# --------------------------------------------------------------------------- model.pretrained forms
def test_pretrained_official_resolves_through_the_url_override(home, server, official, tmp_path):
    from detflow.config.train import TrainConfig
    from detflow.train.runner import resolve_train_config

    cfg = TrainConfig.model_validate({"name": "ft", "model": {"name": "rtmdet_tiny", "pretrained": "official",
                                                              "num_classes": 4},
                                      "data": {"train": {"annotations": "a.json", "images": "img"}}})
    resolved = resolve_train_config(cfg, config_dir=tmp_path)
    assert resolved.model.pretrained == str(home / "weights" / "rtmdet_tiny-mmdet")
    assert server.requests and all(p == f"/{FILE}" for p, _ in server.requests)
    _assert_official_weights(Path(resolved.model.pretrained), official[1])
    # a relative path is still taken against the config's directory
    assert resolve_pretrained("ckpt/best", "rtmdet_tiny", tmp_path) == str(tmp_path / "ckpt" / "best")
    assert resolve_pretrained("s3://b/ckpt", "rtmdet_tiny", tmp_path) == "s3://b/ckpt"


def test_pretrained_models_uri_resolves_against_a_registry(home, server, tmp_path, monkeypatch):
    from detflow import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ckpt = pull("rtmdet_tiny", progress=False)
    with tracking.start_run("register-test") as active:
        run = tracking.Run(active.info.run_id)
        for f in ("model.pt", "config.yaml", "meta.json"):
            run.log_artifact(ckpt / f, "model")
        version = run.register_model("pull_test_model", "model", alias="candidate")
    got = Path(resolve_pretrained(f"models:/pull_test_model/{version}", "rtmdet_tiny"))
    assert is_checkpoint(got) and (got / "model.pt").read_bytes() == (ckpt / "model.pt").read_bytes()
    assert Path(resolve_pretrained("models:/pull_test_model@candidate", "rtmdet_tiny")) == got
    with pytest.raises(UserInputError, match="models:/pull_test_model/9: no such registered model version"):
        resolve_pretrained("models:/pull_test_model/9", "rtmdet_tiny")
    with pytest.raises(UserInputError, match="expected models:/NAME/VERSION"):
        resolve_pretrained("models:/", "rtmdet_tiny")


def test_references_survive_workflow_path_resolution(tmp_path):
    """Workflow lint and job staging make relative paths absolute, but leave references alone."""
    from detflow.sdk import _stage_nested
    from detflow.workflows.lint import _absolutize

    node = {"model": {"pretrained": "official"}, "init": {"pretrained": "models:/m/1"},
            "data": {"pretrained": "ckpt/best"}}
    _absolutize(node, tmp_path)
    assert node["model"]["pretrained"] == "official" and node["init"]["pretrained"] == "models:/m/1"
    assert node["data"]["pretrained"] == str(tmp_path / "ckpt" / "best")
    staged = {"pretrained": "models:/m@champion"}
    _stage_nested(staged, tmp_path, "cfg", tmp_path / "job", {}, warnings := [])
    assert staged == {"pretrained": "models:/m@champion"} and warnings == []
