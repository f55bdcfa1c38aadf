"""Registered versions as MLflow pyfunc models on a real embedded SQLite store: a tiny rtmdet
checkpoint and its fp32 ONNX export, logged with an ``MLmodel`` file (loader module
``detflow.predict.pyfunc``), load through ``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` and
return what ``detflow.predict`` returns; ``mlflow models serve`` answers /invocations with them;
detflow's own ``models:/`` resolution still finds the raw checkpoint files."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from detflow import tracking

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from checkpoints import detecting_rtmdet_tiny  # noqa: E402


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=4, image_size=64, seed=1, val_fraction=0.25)


@pytest.fixture(scope="module")
def checkpoint(synth, tmp_path_factory) -> Path:
    """rtmdet_tiny at 64 px that detects boxes of varied scores."""
    return detecting_rtmdet_tiny(synth, tmp_path_factory.mktemp("ckpt") / "ckpt")


@pytest.fixture(scope="module")
def export(checkpoint, tmp_path_factory) -> Path:
    from detflow.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "onnx"
    export_onnx(str(checkpoint), out, input_size=64, dynamic_batch=False)
    return out


@pytest.fixture(scope="module")
def registry(checkpoint, export, tmp_path_factory):
    """A store with ``tiny`` v1 (the checkpoint, @candidate) and v2 (its ONNX export, @champion,
    tagged with v1 as its upstream version); yields the tracking URI."""
    from detflow.predict import pyfunc

    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("DETFLOW_HOME", str(home))
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.configure()
    run = tracking.Run.create("train", experiment="pyfunc")
    ids = {}
    for kind, files in (("checkpoint", checkpoint), ("onnx", export)):
        ids[kind] = tracking.log_logged_model(run, f"tiny-{kind}", files, model_type=kind, pyfunc={
            "loader_module": pyfunc.LOADER_MODULE, "model_config": {"backend": pyfunc.backend_for(kind)}})
    v1 = run.register_model("tiny", model_id=ids["checkpoint"], alias="candidate")
    v2 = run.register_model("tiny", model_id=ids["onnx"], tags={"detflow.upstream_version": f"tiny/{v1}"})
    run.set_alias("tiny", "champion", v2)
    run.end("FINISHED")
    yield uri
    mlflow.set_tracking_uri(None)
    mp.undo()


def _by_file(results: list[dict]) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for r in results:
        x, y, w, h = r["bbox"]
        out.setdefault(r["file_name"], []).append((r["category_id"], r["score"], (x, y, x + w, y + h)))
    return {k: sorted(v, key=lambda t: -t[1]) for k, v in out.items()}


def _assert_same(dets: list[dict], files: list[Path], reference: list[dict]) -> None:
    ref = _by_file(reference)
    assert ref, "the model detected nothing to compare"
    assert len(dets) == len(files) and {p.name for p in files} >= set(ref)
    for path, det in zip(files, dets):
        assert set(det) >= {"boxes", "scores", "labels", "class_names"}
        got = sorted(zip(det["labels"], det["scores"], det["boxes"]), key=lambda t: -t[1])
        want = ref.get(path.name, [])
        assert len(got) == len(want), path.name
        for (gl, gs, gb), (wl, ws, wb) in zip(got[:20], want[:20]):
            assert gl == wl and gs == pytest.approx(ws, abs=1e-4) and gb == pytest.approx(list(wb), abs=1e-2)
        assert all(n in {"a", "b", "c", "d"} for n in det["class_names"])


def _images(synth) -> list[Path]:
    from detflow.predict import IMAGE_SUFFIXES

    files = sorted(p for p in Path(synth.images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    assert files
    return files


@pytest.mark.parametrize(("alias", "source", "backend"), [("candidate", "checkpoint", "torch"),
                                                          ("champion", "export", "onnxruntime")])
def test_registered_version_loads_as_pyfunc_and_predicts_like_detflow(registry, synth, alias, source, backend, request):
    from PIL import Image

    from detflow.predict import predict

    files = _images(synth)
    model = mlflow.pyfunc.load_model(f"models:/tiny@{alias}")
    reference = predict(request.getfixturevalue(source), images_dir=synth.images_dir, backend=backend)
    _assert_same(model.predict(pd.DataFrame({"path": [str(p) for p in files]})), files, reference)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    _assert_same(model.predict(arrays), files, reference)  # a list of H×W×3 uint8 arrays
    b64 = [base64.b64encode(p.read_bytes()).decode() for p in files]
    _assert_same(model.predict(pd.DataFrame({"image": b64})), files, reference)


def test_raw_files_stay_and_lineage_names_the_upstream_version(registry, tmp_path):
    from detflow.tracking.registry import download_model_version

    client = MlflowClient(registry)
    champion = client.get_model_version_by_alias("tiny", "champion")
    assert champion.tags["detflow.upstream_version"] == "tiny/1"
    local = download_model_version("models:/tiny@candidate", tmp_path / "cache")
    assert {"model.pt", "config.yaml", "meta.json", "MLmodel"} <= {p.name for p in local.iterdir()}
    onnx = download_model_version("models:/tiny@champion", tmp_path / "cache")
    assert {"model.onnx", "model.json", "MLmodel"} <= {p.name for p in onnx.iterdir()}
    assert "detflow.predict.pyfunc" in (onnx / "MLmodel").read_text()


def test_bad_input_is_a_one_line_error(registry):
    from detflow.errors import UserInputError

    model = mlflow.pyfunc.load_model("models:/tiny@candidate")
    with pytest.raises(UserInputError, match="'path' or 'image'"):
        model.predict(pd.DataFrame({"file": ["x.png"]}))
    with pytest.raises(UserInputError, match="no such image file"):
        model.predict(["/nonexistent/x.png"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(registry, synth, export):
    from detflow.predict import predict

    files = _images(synth)
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}  # uvicorn
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/tiny@champion",
                             "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"mlflow models serve did not come up: {proc.stdout.read()[-3000:]}")
                time.sleep(1)
        body = json.dumps({"dataframe_records": [{"path": str(p)} for p in files]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                reply = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"/invocations: {exc.code} {exc.read().decode()[:3000]}") from None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    dets = reply["predictions"]
    assert len(dets) == len(files)
    _assert_same(dets, files, predict(export, images_dir=synth.images_dir, backend="onnxruntime"))
