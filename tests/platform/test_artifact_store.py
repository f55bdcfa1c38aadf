"""detflow.artifact_store on the local filesystem, the storage URL checks, and the storage lint rule
(its S3 side is exercised against SeaweedFS in tests/services/test_artifact_store_s3.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from detflow import artifact_store as store
from detflow.errors import UserInputError
from detflow.workflows.execute import publish_outputs


def _tree(root):
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "train.json").write_text("{}")
    (root / "data" / "images" / "1.jpg").write_bytes(b"jpg")
    return root


def test_join_never_uses_pathlib_on_urls(tmp_path):
    assert store.join("s3://bucket/prefix/", "run", "step") == "s3://bucket/prefix/run/step"
    assert store.join("s3://bucket", "a/", "/b") == "s3://bucket/a/b"
    assert store.join("gs://b/x", "y") == "gs://b/x/y"
    assert store.join(str(tmp_path), "run", "step") == str(tmp_path / "run" / "step")
    assert store.join(f"file://{tmp_path}", "a") == str(tmp_path / "a")


def test_local_upload_download_materialize(tmp_path):
    src = _tree(tmp_path / "scratch")
    dest = store.join(str(tmp_path), "storage", "run1", "synth")
    store.upload(src, dest)
    assert store.exists(store.join(dest, "data", "images", "1.jpg"))
    assert store.is_dir(store.join(dest, "data"))
    assert store.list_dir(store.join(dest, "data")) == ["images", "train.json"]
    assert store.read_text(store.join(dest, "data", "train.json")) == "{}"
    copy = store.download(store.join(dest, "data"), tmp_path / "copy")
    assert (copy / "images" / "1.jpg").read_bytes() == b"jpg"
    assert store.materialize(dest) == tmp_path / "storage" / "run1" / "synth"  # local: as is
    store.delete(store.join(dest, "data", "train.json"))
    assert not store.exists(store.join(dest, "data", "train.json"))
    with pytest.raises(UserInputError, match="no such file"):
        store.materialize(tmp_path / "missing")


def test_publish_rewrites_scratch_paths_to_stored_locations(tmp_path):
    scratch = _tree(tmp_path / "scratch")
    storage = store.join(str(tmp_path), "runs", "r1", "synth")
    outputs = {"dataset": {"train_json": str(scratch / "data" / "train.json"), "images_dir": str(scratch / "data" / "images")},
               "metrics": {"n": 1}, "elsewhere": "/opt/model.onnx", "runs": [str(scratch)]}
    stored = publish_outputs(outputs, scratch, storage)
    assert stored["dataset"] == {"train_json": f"{storage}/data/train.json", "images_dir": f"{storage}/data/images"}
    assert stored["metrics"] == {"n": 1} and stored["elsewhere"] == "/opt/model.onnx" and stored["runs"] == [storage]
    assert store.exists(stored["dataset"]["train_json"])


@pytest.mark.parametrize("url, env, expected", [
    ("s3//bucket/x", {}, None),                                            # a (relative) local path
    ("ftp://host/x", {}, "unknown scheme 'ftp'"),
    ("s3:///prefix", {}, "no bucket"),
    ("s3://bucket/x", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ("s3://bucket/x", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}, None),
    ("s3://bucket/x", {}, None),                                           # AWS itself: instance roles may answer
])
def test_check_storage_url(url, env, expected):
    problem = store.check_storage_url(url, env)
    assert (problem is None) if expected is None else (expected in problem)


def test_unknown_storage_scheme_is_refused_before_anything_runs(tmp_path):
    wf = {"kind": "workflow", "name": "bad-storage", "defaults": {"storage": "s4://bucket/prefix"},
          "steps": [{"id": "synth", "uses": "synth", "with": {"num_images": 4}}]}
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(wf, sort_keys=False))
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-m", "detflow", "run", str(path)], capture_output=True, text=True,
                          env={"DETFLOW_HOME": str(home), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "defaults.storage: 's4://bucket/prefix': unknown scheme 's4'" in proc.stderr
    assert f"{path}:" in proc.stderr
    assert not (home / "workflows.db").exists() and not (home / "workflows").exists()
