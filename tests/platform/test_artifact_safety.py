"""Int8 ``.pt2`` quant artifacts are deserialised only when they match the digest detflow recorded.

``torch.export.load`` retries a failed safe load with ``weights_only=False``: a crafted ``model.int8.pt2``
runs code the moment it is loaded. These tests plant one where detflow expects a quantisation output and
check that nothing runs and the load is refused with a one-line ``UserInputError`` (exit 2).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from detflow.bench import BenchArtifact, evaluate_artifact, load_artifact, make_runner, run_benchmark
from detflow.errors import UserInputError
from detflow.quant.common import INT8_PT2, load_torch_program, save_torch_program


class RunsShell:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Tiny(nn.Module):
    def forward(self, images):
        return images.flatten(1)[:, :4].reshape(-1, 1, 4), images.mean((1, 2, 3)).reshape(-1, 1, 1)


@pytest.fixture(scope="module")
def program_bytes(tmp_path_factory) -> bytes:
    """A genuine ``torch.export`` archive (the structure an int8 program has), saved by detflow."""
    out = tmp_path_factory.mktemp("genuine")
    assert save_torch_program(Tiny(), torch.zeros(2, 3, 8, 8), out) == str(out / INT8_PT2)
    return (out / INT8_PT2).read_bytes()


def _evil_pt2(program: bytes, marker: Path) -> bytes:
    """``program`` with its sample inputs replaced by a pickle whose load runs ``touch marker``: the
    weights_only load fails on it and torch.export retries with weights_only=False."""
    payload = io.BytesIO()
    torch.save((RunsShell(marker), {}), payload)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(program)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, payload.getvalue() if info.filename.endswith("sample_inputs/model.pt") else data)
    return out.getvalue()


def _quant_dir(root: Path, pt2: bytes, digest: str | None) -> Path:
    """A directory shaped like a quantisation output (model.int8.onnx + sidecar + model.int8.pt2)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.int8.onnx").write_bytes(b"not used by the torch backend")
    (root / "model.int8.json").write_text(json.dumps({"precision": "int8", "input_size": [8, 8]}))
    (root / INT8_PT2).write_bytes(pt2)
    if digest is not None:
        (root / f"{INT8_PT2}.sha256").write_text(f"{digest}  {INT8_PT2}\n")
    return root


def _assert_refused(exc_info, path: Path) -> None:
    message = str(exc_info.value)
    assert exc_info.value.exit_code == 2 and "\n" not in message
    assert str(path / INT8_PT2) in message and "refusing" in message


@pytest.mark.parametrize("digest", [None, "0" * 64, "not-a-digest", "genuine"],
                         ids=["missing", "wrong", "garbage", "digest-of-the-genuine-program"])
def test_crafted_pt2_is_refused_and_never_runs(tmp_path, program_bytes, digest):
    marker = tmp_path / "MARKER"
    recorded = hashlib.sha256(program_bytes).hexdigest() if digest == "genuine" else digest
    qdir = _quant_dir(tmp_path / "quant", _evil_pt2(program_bytes, marker), recorded)
    art = load_artifact(qdir)
    assert art.kind == "quant" and art.torch_program == str(qdir / INT8_PT2)
    with pytest.raises(UserInputError) as exc_info:
        make_runner(art, "torch", input_size=(8, 8))
    _assert_refused(exc_info, qdir)
    with pytest.raises(UserInputError) as exc_info:  # evaluate_artifact refuses before reading any data
        evaluate_artifact(qdir, None, backend="torch")
    _assert_refused(exc_info, qdir)
    with pytest.raises(UserInputError):
        load_torch_program(qdir / INT8_PT2)
    assert not marker.exists()


def test_benchmark_matrix_reports_the_refusal_without_running_the_payload(tmp_path, program_bytes):
    marker = tmp_path / "MARKER"
    qdir = _quant_dir(tmp_path / "quant", _evil_pt2(program_bytes, marker), None)
    table = run_benchmark([BenchArtifact("ptq", str(qdir))], backends=["torch"], batch_sizes=[1], input_size=8,
                          warmup=0, iters=1, work_dir=tmp_path / "work")
    rows = table.to_records()
    assert rows and all(r["status"] == "n/a" and "refusing" in r["note"] for r in rows)
    assert not marker.exists()


def test_program_saved_by_detflow_loads_and_runs(tmp_path, program_bytes):
    out = tmp_path / "quant"
    out.mkdir()
    save_torch_program(Tiny(), torch.zeros(2, 3, 8, 8), out)
    digest = (out / f"{INT8_PT2}.sha256").read_text().split()[0]
    assert digest == hashlib.sha256((out / INT8_PT2).read_bytes()).hexdigest()
    qdir = _quant_dir(out, (out / INT8_PT2).read_bytes(), digest)
    runner = make_runner(load_artifact(qdir), "torch", input_size=(8, 8))
    boxes, scores = runner(torch.ones(3, 3, 8, 8))
    assert boxes.shape == (3, 1, 4) and scores.shape == (3, 1, 1)


def test_failed_save_leaves_no_program_or_digest(tmp_path):
    class Unexportable(nn.Module):
        def forward(self, images):
            raise RuntimeError("cannot trace")

    (tmp_path / INT8_PT2).write_bytes(b"stale")
    (tmp_path / f"{INT8_PT2}.sha256").write_text("stale")
    assert save_torch_program(Unexportable(), torch.zeros(1, 3, 8, 8), tmp_path) is None
    assert not (tmp_path / INT8_PT2).exists() and not (tmp_path / f"{INT8_PT2}.sha256").exists()
