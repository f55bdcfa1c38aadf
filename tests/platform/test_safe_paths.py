"""Hardening: downloads never write outside their destination (one key->path rule, a byte cap, a
temporary directory renamed into place), the dependency floors, duplicate YAML keys, run-id
validation and the state directory's mode. All fast: no Ray, no network (the S3 side is in
tests/services/test_safe_download_s3.py)."""
from __future__ import annotations

import os
import stat
import sys
import textwrap
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from detflow import artifact_store as store
from detflow.errors import ConfigError, UserInputError

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ the key->path rule
@pytest.mark.parametrize("key", ["../x", "/etc/x", "a//b", "a/./b", "a/..", "..", ".", "", "a/", "a/../../x",
                                 "..\\x", "a\0b"])
def test_key_path_refuses_keys_that_are_not_one_clean_relative_path(tmp_path, key):
    with pytest.raises(UserInputError) as err:
        store.key_path(key, tmp_path / "dest", "s3://bucket/prefix")
    message = str(err.value)
    assert "\n" not in message and message.startswith("s3://bucket/prefix: object key ")


@pytest.mark.parametrize("key, parts", [("x", ("x",)), ("a/b.txt", ("a", "b.txt")), ("a/b/c.json", ("a", "b", "c.json")),
                                        ("...", ("...",)), ("a/..b", ("a", "..b")), (".hidden", (".hidden",))])
def test_key_path_maps_normal_keys_inside_the_destination(tmp_path, key, parts):
    assert store.key_path(key, tmp_path / "dest") == (tmp_path / "dest").resolve().joinpath(*parts)


def test_key_path_refuses_a_target_that_resolves_outside_through_a_symlink(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(UserInputError, match="resolves outside the destination"):
        store.key_path("link/x", tmp_path / "dest", "s3://b/p")


# ------------------------------------------------------------------- artifact_store.download (local)
class _Injecting(pafs.FileSystemHandler):
    """The local filesystem, whose recursive listings also show ``extra`` (relative keys that no local
    directory can hold: ``../escape.txt``, ``/abs``, ``a//b``), read from ``sources`` — what a
    hostile object store may list. ``sizes`` overrides listed sizes (a store that under-reports)."""

    def __init__(self, extra=(), sources=None, sizes=None):
        self.local = pafs.LocalFileSystem()
        self.extra, self.sources, self.sizes = list(extra), dict(sources or {}), dict(sizes or {})

    def _real(self, path):
        return self.sources.get(path, path)

    def get_type_name(self):
        return "injecting"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.local.get_file_info([self._real(p) for p in paths])

    def get_file_info_selector(self, selector):
        infos = [pafs.FileInfo(i.path, i.type, size=self.sizes.get(i.path, i.size))
                 for i in self.local.get_file_info(selector)]
        for key in self.extra:
            path = f"{selector.base_dir}/{key}"
            infos.append(pafs.FileInfo(path, pafs.FileType.File, size=self.local.get_file_info(self._real(path)).size))
        return infos

    def open_input_stream(self, path):
        return self.local.open_input_stream(self._real(path))

    def open_input_file(self, path):
        return self.local.open_input_file(self._real(path))

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self.local.copy_file(self._real(src), dest)

    def open_output_stream(self, path, metadata):
        return self.local.open_output_stream(path)

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path)


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"aaaa")
    (root / "sub" / "b.bin").write_bytes(b"b" * 100)
    return root


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".part-" in p.name)


def test_local_download_copies_the_tree_through_a_temporary_directory(tmp_path):
    src = _tree(tmp_path / "src")
    out = store.download(src, tmp_path / "out" / "copy")
    assert (out / "a.txt").read_bytes() == b"aaaa" and (out / "sub" / "b.bin").read_bytes() == b"b" * 100
    assert _leftovers(tmp_path / "out") == []
    (tmp_path / "out" / "copy" / "mine.txt").write_text("kept")  # an existing directory receives the files
    (src / "a.txt").write_bytes(b"new")
    store.download(src, tmp_path / "out" / "copy")
    assert (out / "a.txt").read_bytes() == b"new" and (out / "mine.txt").read_text() == "kept"
    assert store.download(src / "a.txt", tmp_path / "one.txt").read_bytes() == b"new"   # a single file
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("bad", ["../escape.txt", "sub/../../escape.txt", "/abs.txt", "sub//x.txt", "./x.txt"])
def test_download_refuses_a_listed_key_that_would_leave_the_destination(tmp_path, monkeypatch, bad):
    src = _tree(tmp_path / "store" / "src")
    (tmp_path / "secret.txt").write_text("escape")
    base = str(src.resolve())
    fs = pafs.PyFileSystem(_Injecting([bad], {f"{base}/{bad}": str(tmp_path / "secret.txt")}))
    monkeypatch.setattr(store, "filesystem", lambda location: (fs, base))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UserInputError) as err:
        store.download("s3://bucket/src", work / "dest")
    assert "\n" not in str(err.value) and str(err.value).startswith("s3://bucket/src: object key ")
    assert sorted(p.name for p in work.iterdir()) == []          # nothing: no dest, no temporary directory
    assert not (tmp_path / "store" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    assert not Path("/abs.txt").exists()


def test_download_is_capped_and_a_failed_download_leaves_nothing(tmp_path, monkeypatch):
    src = _tree(tmp_path / "src")
    (tmp_path / "work").mkdir()
    monkeypatch.setenv("DETFLOW_MAX_DOWNLOAD_BYTES", "50")   # the tree holds 104 bytes
    with pytest.raises(UserInputError) as err:
        store.download(src, tmp_path / "work" / "dest")
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(src)) and "DETFLOW_MAX_DOWNLOAD_BYTES" in message
    assert list((tmp_path / "work").iterdir()) == []

    # a store that under-reports sizes: the cap holds while streaming, after some files are written
    base = str(src.resolve())
    fs = pafs.PyFileSystem(_Injecting(sizes={f"{base}/sub/b.bin": 0}))
    monkeypatch.setattr(store, "filesystem", lambda location: (fs, base))
    with pytest.raises(UserInputError, match="more than 50 bytes"):
        store.download("s3://bucket/src", tmp_path / "work" / "dest")
    assert list((tmp_path / "work").iterdir()) == []

    monkeypatch.setenv("DETFLOW_MAX_DOWNLOAD_BYTES", "lots")
    with pytest.raises(UserInputError, match="DETFLOW_MAX_DOWNLOAD_BYTES='lots'"):
        store.max_download_bytes()
    monkeypatch.delenv("DETFLOW_MAX_DOWNLOAD_BYTES")
    assert store.max_download_bytes() == 20 * 1024**3


# ------------------------------------------------------------------------ storage.download_dir (boto3)
class _FakeS3:
    """The two calls download_dir makes, over a dict of key -> bytes."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def get_paginator(self, name):
        objects = self.objects

        class Pages:
            def paginate(self, Bucket, Prefix):  # noqa: N803 — boto3's names
                yield {"Contents": [{"Key": k, "Size": len(v)} for k, v in objects.items() if k.startswith(Prefix)]}

        return Pages()

    def download_file(self, bucket, key, filename):
        Path(filename).write_bytes(self.objects[key])


@pytest.mark.parametrize("bad", ["ckpt/../escape.txt", "ckpt//x", "ckpt/./x", "ckpt/a/../../escape.txt"])
def test_download_dir_refuses_keys_outside_the_destination(tmp_path, bad):
    from detflow.storage import download_dir

    work = tmp_path / "work"
    work.mkdir()
    client = _FakeS3({"ckpt/model.pt": b"weights", bad: b"escape"})
    with pytest.raises(UserInputError) as err:
        download_dir("s3://bucket/ckpt", work / "dest", client=client)
    assert "\n" not in str(err.value) and str(err.value).startswith("s3://bucket/ckpt: object key ")
    assert list(work.iterdir()) == [] and not (tmp_path / "escape.txt").exists()


def test_download_dir_is_capped_and_renamed_into_place(tmp_path, monkeypatch):
    from detflow.storage import download_dir

    client = _FakeS3({"ckpt/model.pt": b"w" * 40, "ckpt/sub/meta.json": b"{}"})
    out = download_dir("s3://bucket/ckpt/", tmp_path / "dest", client=client)
    assert (out / "model.pt").read_bytes() == b"w" * 40 and (out / "sub" / "meta.json").read_bytes() == b"{}"
    assert _leftovers(tmp_path) == []
    monkeypatch.setenv("DETFLOW_MAX_DOWNLOAD_BYTES", "41")
    with pytest.raises(UserInputError, match=r"^s3://bucket/ckpt: more than 41 bytes to download"):
        download_dir("s3://bucket/ckpt", tmp_path / "other", client=client)
    assert not (tmp_path / "other").exists() and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------- dependency floors
def test_dependency_floors_are_checked_with_a_one_line_error():
    import detflow

    def fake(**versions):
        def version(name):
            if name not in versions:
                import importlib.metadata

                raise importlib.metadata.PackageNotFoundError(name)
            return versions[name]
        return version

    detflow.check_dependency_versions(fake(torch="2.13.0+cpu", mlflow="3.17.2"))
    detflow.check_dependency_versions(fake(torch="2.10.0", mlflow="3.5"))
    detflow.check_dependency_versions(fake(torch="2.10.0a0+git1234", mlflow="3.5.0rc1"))  # pre-releases of the floor
    detflow.check_dependency_versions(fake(torch="2.11"))                                  # mlflow absent: left alone
    for versions, name, installed, floor in [({"torch": "2.4.1", "mlflow": "3.17"}, "torch", "2.4.1", "2.10"),
                                             ({"torch": "2.9.1+cu128", "mlflow": "3.5"}, "torch", "2.9.1+cu128", "2.10"),
                                             ({"torch": "2.13.0", "mlflow": "3.4.0"}, "mlflow", "3.4.0", "3.5")]:
        with pytest.raises(ImportError) as err:
            detflow.check_dependency_versions(fake(**versions))
        message = str(err.value)
        assert "\n" not in message and f"{name}>={floor}" in message and f"{name} {installed} is installed" in message


def test_pyproject_floors_match_the_import_check():
    tomllib = pytest.importorskip("tomllib")
    import detflow

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch>=2.10,<3" in deps and "mlflow>=3.5" in deps
    assert detflow.DEPENDENCY_FLOORS == {"torch": "2.10", "mlflow": "3.5"}


# -------------------------------------------------------------------------------- duplicate YAML keys
DUP_WORKFLOW = """\
name: dup
defaults: {model: rtmdet_tiny, data: synth}
steps:
  - id: train
    uses: train
    with:
      train:
        epochs: 2
        batch_size: 2
        epochs: 3
"""


def test_duplicate_keys_in_a_workflow_file_are_refused_with_both_lines(tmp_path):
    from detflow.workflows.lint import load_workflow

    path = tmp_path / "wf.yaml"
    path.write_text(DUP_WORKFLOW)
    with pytest.raises(ConfigError) as err:
        load_workflow(path)
    assert err.value.exit_code == 2
    assert err.value.errors == [f"{path}:10: duplicate key 'epochs' (first at line 8)"]


def test_duplicate_keys_in_a_config_file_are_refused_with_both_lines(tmp_path):
    from detflow.config.base import read_yaml

    path = tmp_path / "train.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 2\nname: y\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    assert err.value.exit_code == 2 and err.value.errors == [f"{path}:4: duplicate key 'name' (first at line 1)"]
    path.write_text("a: {b: 1, b: 2}\n")
    with pytest.raises(ConfigError, match=r"train.yaml:1: duplicate key 'b' \(first at line 1\)"):
        read_yaml(path)


def test_merge_keys_may_still_be_overridden(tmp_path):
    from detflow.config.base import read_yaml

    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""\
        base: &base {epochs: 2, lr: 0.1}
        train:
          <<: *base
          epochs: 5
        """))
    data = read_yaml(path)
    assert data["train"] == {"epochs": 5, "lr": 0.1} and type(data) is dict   # plain dicts, not LineDicts


# ---------------------------------------------------------------------------------------- run ids
@pytest.mark.parametrize("run_id", ["../x", "a/b", "-flag", ".hidden", "x" * 65, "ok\n", "", "a b", "é"])
def test_run_workflow_refuses_a_bad_run_id_before_touching_state(monkeypatch, run_id):
    from detflow.workflows import engine
    from detflow.workflows.lint import parse_workflow

    def no_state(*a, **k):
        raise AssertionError("the state store was opened")

    monkeypatch.setattr(engine, "StateStore", no_state)
    monkeypatch.setattr(engine, "_check_storage", no_state)
    wf = parse_workflow({"name": "ok", "steps": [{"id": "synth", "uses": "synth"}]}, "wf.yaml")
    with pytest.raises(UserInputError) as err:
        engine.run_workflow(wf, run_id=run_id)
    message = str(err.value)
    assert err.value.exit_code == 2 and message.startswith(f"--run-id {run_id!r}:") and message.count("\n") == 0


def test_good_run_ids_pass():
    from detflow.paths import check_run_id

    for run_id in ("a", "quickstart-20260101-120000-ab12", "A.b_c-1", "x" * 64):
        assert check_run_id(run_id) == run_id


# ------------------------------------------------------------------------------------ state directory
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_state_dir_is_created_private(tmp_path, monkeypatch):
    from detflow.paths import state_dir

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "deep" / "home"))
    old = os.umask(0o022)
    try:
        path = state_dir()
    finally:
        os.umask(old)
    assert path == (tmp_path / "deep" / "home").resolve() and stat.S_IMODE(path.stat().st_mode) == 0o700
    assert state_dir() == path
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    monkeypatch.setenv("DETFLOW_HOME", str(shared))
    assert stat.S_IMODE(state_dir().stat().st_mode) == 0o755   # an existing directory keeps its mode
