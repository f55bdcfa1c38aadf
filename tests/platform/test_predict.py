"""detflow predict on any artifact: a checkpoint, its fp32 ONNX export (fixed batch) and its int8
export on onnxruntime, images or a video (PyAV), with one-line errors for bad input."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from detflow.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from checkpoints import detecting_rtmdet_tiny  # noqa: E402


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from detflow.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth"), num_images=6, image_size=64, seed=1, val_fraction=0.34)


@pytest.fixture(scope="module")
def checkpoint(synth, tmp_path_factory) -> Path:
    """rtmdet_tiny at 64 px that detects boxes of varied scores."""
    return detecting_rtmdet_tiny(synth, tmp_path_factory.mktemp("ckpt") / "ckpt")


def _iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0.0, min(ax1, bx1) - max(a[0], b[0])), max(0.0, min(ay1, by1) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih + 1e-9)


def _top(results, image_id, k=5):
    return sorted((r for r in results if r["image_id"] == image_id), key=lambda r: -r["score"])[:k]


def test_fp32_onnx_export_predicts_what_the_checkpoint_predicts(checkpoint, synth, tmp_path):
    from detflow.export import export_onnx
    from detflow.predict import predict

    export = tmp_path / "onnx"
    export_onnx(str(checkpoint), export, input_size=64, dynamic_batch=False)  # a fixed batch of 1
    ref = predict(checkpoint, images_dir=synth.images_dir, score_thr=0.05)
    got = predict(export, images_dir=synth.images_dir, score_thr=0.05, backend="onnxruntime", batch_size=4)
    assert ref, "the checkpoint detected nothing to compare"
    for image_id in {r["image_id"] for r in ref}:
        for mine in _top(ref, image_id):
            match = [r for r in got if r["image_id"] == image_id and r["category_id"] == mine["category_id"]
                     and _iou(r["bbox"], mine["bbox"]) > 0.95 and abs(r["score"] - mine["score"]) < 1e-3]
            assert match, f"image {image_id}: {mine} not found in the ONNX predictions"
    assert {r["file_name"] for r in got} <= {p.name for p in Path(synth.images_dir).iterdir()}


def test_int8_export_predicts_through_the_cli(checkpoint, synth, tmp_path, capsys):
    from detflow.config.train import DatasetSplit
    from detflow.quant import run_ptq

    run_ptq(str(checkpoint), tmp_path / "int8", calib_batches=1, data=DatasetSplit(
        annotations=str(synth.train_json), images=str(synth.images_dir)))
    out, draw = tmp_path / "preds.json", tmp_path / "draw"
    code = main(["predict", str(tmp_path / "int8"), "--backend", "onnxruntime", "--images", str(synth.images_dir),
                 "--out", str(out), "--draw", str(draw), "--score-thr", "0.05"])
    assert code == 0, capsys.readouterr().err
    results = json.loads(out.read_text())
    assert results and {"image_id", "category_id", "bbox", "score", "file_name"} <= set(results[0])
    assert len(list(draw.glob("*.png"))) == len(list(Path(synth.images_dir).glob("*.jpg")))


def _write_video(path: Path, frames: list[np.ndarray], rate: int = 5) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _frames(synth, n: int) -> list[np.ndarray]:
    from PIL import Image

    files = sorted(Path(synth.images_dir).glob("*.jpg"))
    return [np.asarray(Image.open(files[i % len(files)]).convert("RGB").resize((96, 64))) for i in range(n)]


def test_video_gets_per_frame_results_and_an_annotated_video(checkpoint, synth, tmp_path, capsys):
    import av

    video, annotated, out = tmp_path / "in.mp4", tmp_path / "det.mp4", tmp_path / "video.json"
    _write_video(video, _frames(synth, 9))
    code = main(["predict", str(checkpoint), "--video", str(video), "--out", str(out), "--draw", str(annotated),
                 "--score-thr", "0.05", "--batch-size", "4"])
    assert code == 0, capsys.readouterr().err
    results = json.loads(out.read_text())
    assert {r["frame"] for r in results} <= set(range(9)) and len({r["frame"] for r in results}) >= 5
    assert all(r["image_id"] == r["frame"] + 1 and r["time_s"] == pytest.approx(r["frame"] / 5) for r in results)
    with av.open(str(annotated)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 9 and decoded[0].shape == (64, 96, 3)
    assert not list(tmp_path.glob(".*part*")), "a temporary video was left behind"


def test_bad_video_and_bad_sources_are_one_line_errors(checkpoint, synth, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    annotated = tmp_path / "det.mp4"
    cases = [
        (["predict", str(checkpoint), "--video", str(bad), "--out", str(tmp_path / "a.json"), "--draw", str(annotated)],
         "cannot be decoded"),
        (["predict", str(checkpoint), "--video", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "b.json")],
         "no such file"),
        (["predict", str(checkpoint), "--video", str(bad), "--images", str(synth.images_dir), "--out",
          str(tmp_path / "c.json")], "got --images --video"),
        (["predict", str(tmp_path / "nothing"), "--images", str(synth.images_dir), "--out", str(tmp_path / "d.json")],
         "no such artifact"),
        (["predict", str(checkpoint), "--backend", "tflite", "--images", str(synth.images_dir), "--out",
          str(tmp_path / "e.json")], "'tflite'"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not annotated.exists() and not list(tmp_path.glob("*.json"))
