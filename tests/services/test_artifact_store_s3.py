"""detflow.artifact_store against a real S3 server (SeaweedFS): the same calls as on a local disk."""
from __future__ import annotations

import pytest

from detflow import artifact_store as store

pytestmark = pytest.mark.services


def test_s3_round_trip(s3, tmp_path, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    s3.create_bucket("store-test")
    src = tmp_path / "scratch"
    (src / "onnx").mkdir(parents=True)
    (src / "onnx" / "model.onnx").write_bytes(b"onnx-bytes")
    (src / "table.md").write_text("| a |")
    step = store.join("s3://store-test/runs", "r1", "export")
    store.upload(src, step)
    assert store.exists(store.join(step, "onnx", "model.onnx")) and store.is_dir(step)
    assert store.list_dir(step) == ["onnx", "table.md"]
    assert store.read_text(store.join(step, "table.md")) == "| a |"
    local = store.materialize(store.join(step, "onnx", "model.onnx"))
    assert local.read_bytes() == b"onnx-bytes" and local.name == "model.onnx"
    assert store.materialize(store.join(step, "onnx", "model.onnx")) == local   # once per process
    copy = store.download(step, tmp_path / "copy")
    assert (copy / "onnx" / "model.onnx").read_bytes() == b"onnx-bytes"
    store.write_text(store.join(step, "step.log"), "line\n")
    assert store.read_text(store.join(step, "step.log")) == "line\n"
    store.delete(store.join(step, "onnx"))
    assert not store.exists(store.join(step, "onnx", "model.onnx"))
    assert not store.exists("s3://store-test/runs/missing")


def test_missing_bucket_is_refused_before_anything_is_written(s3, tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    wf = {"name": "no-bucket", "defaults": {"storage": "s3://no-such-bucket/runs"},
          "steps": [{"id": "synth", "uses": "synth", "with": {"num_images": 4}}]}
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"kind": "workflow", **wf}, sort_keys=False))
    home = tmp_path / "home"
    env = {**os.environ, **s3.env(), "DETFLOW_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "detflow", "run", str(path)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "defaults.storage: 's3://no-such-bucket/runs': bucket 'no-such-bucket' does not exist" in proc.stderr
    assert s3.secret_key not in proc.stderr + proc.stdout
    assert not (home / "workflows.db").exists() and not (home / "workflows").exists()
