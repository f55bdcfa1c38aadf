"""Downloads from a real S3 server (SeaweedFS) never write outside their destination.

What SeaweedFS stores for hostile keys (checked here, on ``weed mini`` 4.x): a key with a ``..`` or
``.`` segment is refused (``InvalidRequest``, even percent-encoded); ``prefix//x`` is stored as
``prefix/x`` and ``/prefix/x`` as ``prefix/x`` (normalised). So the server itself cannot list a key
that escapes; the refusal of such keys is tested by adding them to the real server's listing (an
S3 implementation that keeps keys verbatim, as AWS does, lists them exactly so)."""
from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from detflow import artifact_store as store
from detflow.errors import UserInputError

pytestmark = pytest.mark.services

BUCKET = "safe-download"
HOSTILE = ["prefix/../escape.txt", "prefix/./dot.txt", "prefix//x.txt", "/prefix/lead.txt", "prefix/a/../../up.txt"]


@pytest.fixture
def bucket(s3, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    client = s3.client()
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        s3.create_bucket(BUCKET)
    return client


def _everything_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_hostile_keys_are_refused_or_normalised_and_nothing_escapes(bucket, tmp_path):
    from botocore.exceptions import ClientError

    from detflow.storage import download_dir

    bucket.put_object(Bucket=BUCKET, Key="prefix/ok.txt", Body=b"ok")
    stored = {}
    for key in HOSTILE:
        try:
            bucket.put_object(Bucket=BUCKET, Key=key, Body=b"hostile")
            stored[key] = True
        except ClientError:
            stored[key] = False
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    for key in keys:  # whatever the server kept is one clean relative path
        assert not key.startswith("/") and all(part not in ("", ".", "..") for part in key.split("/")), keys
    assert "escape.txt" not in keys and "up.txt" not in keys

    work = tmp_path / "work"
    work.mkdir()
    for name, fetch in [("boto3", lambda dest: download_dir(f"s3://{BUCKET}/prefix", dest)),
                        ("pyarrow", lambda dest: store.download(f"s3://{BUCKET}/prefix", dest))]:
        dest = work / name
        try:
            fetch(dest)
        except UserInputError as exc:  # a server that kept a hostile key verbatim: refused, one line
            assert "\n" not in str(exc) and str(exc).startswith(f"s3://{BUCKET}/prefix: object key ")
            assert not dest.exists()
        else:
            assert "ok.txt" in _everything_under(dest)
    assert [p.name for p in work.iterdir() if ".part-" in p.name] == []
    assert not (tmp_path / "escape.txt").exists() and not (work / "escape.txt").exists()
    assert not (tmp_path / "up.txt").exists() and not (work / "up.txt").exists()


class _Listing:
    """A real boto3 client whose listings also show ``extra`` keys (as a verbatim-key store would)."""

    def __init__(self, client, extra):
        self.client, self.extra = client, extra

    def get_paginator(self, name):
        real, extra = self.client.get_paginator(name), self.extra

        class Pages:
            def paginate(self, **kwargs):
                yield from real.paginate(**kwargs)
                yield {"Contents": [{"Key": k, "Size": 7} for k in extra]}

        return Pages()

    def download_file(self, bucket, key, filename):
        return self.client.download_file(bucket, key, filename)


class _ListingFS(pafs.FileSystemHandler):
    """The real pyarrow S3 filesystem, whose recursive listings also show ``extra`` relative keys."""

    def __init__(self, fs, extra):
        self.fs, self.extra = fs, extra

    def get_type_name(self):
        return "listing"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return [*self.fs.get_file_info(selector),
                *(pafs.FileInfo(f"{selector.base_dir}/{k}", pafs.FileType.File, size=7) for k in self.extra)]

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def _no(self, *args, **kwargs):
        raise NotImplementedError

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _no
    move = copy_file = open_output_stream = open_append_stream = _no


@pytest.mark.parametrize("hostile", ["../escape.txt", "a/../../escape.txt", "/escape.txt", "a//escape.txt"])
def test_a_listed_hostile_key_is_refused_before_anything_is_written(bucket, tmp_path, monkeypatch, hostile):
    from detflow.storage import download_dir

    bucket.put_object(Bucket=BUCKET, Key="listed/model.pt", Body=b"weights")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UserInputError) as err:
        download_dir(f"s3://{BUCKET}/listed", work / "boto3", client=_Listing(bucket, [f"listed/{hostile}"]))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"s3://{BUCKET}/listed: object key ")

    fs, path = store.filesystem(f"s3://{BUCKET}/listed")
    wrapped = pafs.PyFileSystem(_ListingFS(fs, [hostile]))
    monkeypatch.setattr(store, "filesystem", lambda location: (wrapped, path))
    with pytest.raises(UserInputError) as err:
        store.download(f"s3://{BUCKET}/listed", work / "pyarrow")
    assert "\n" not in str(err.value) and str(err.value).startswith(f"s3://{BUCKET}/listed: object key ")
    assert list(work.iterdir()) == [] and not (tmp_path / "escape.txt").exists()


def test_the_byte_cap_holds_on_s3_and_a_refused_download_leaves_nothing(bucket, tmp_path, monkeypatch, s3):
    from detflow.storage import download_dir

    bucket.put_object(Bucket=BUCKET, Key="big/a.bin", Body=b"a" * 600)
    bucket.put_object(Bucket=BUCKET, Key="big/sub/b.bin", Body=b"b" * 600)
    monkeypatch.setenv("DETFLOW_MAX_DOWNLOAD_BYTES", "1000")
    work = tmp_path / "work"
    work.mkdir()
    for fetch in (download_dir, store.download, store.materialize):
        with pytest.raises(UserInputError) as err:
            fetch(f"s3://{BUCKET}/big", *([] if fetch is store.materialize else [work / "dest"]))
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"s3://{BUCKET}/big: more than 1000 bytes")
        assert s3.secret_key not in message
    assert list(work.iterdir()) == []
    monkeypatch.setenv("DETFLOW_MAX_DOWNLOAD_BYTES", "1200")
    assert (download_dir(f"s3://{BUCKET}/big", work / "dest") / "sub" / "b.bin").read_bytes() == b"b" * 600
    assert (store.download(f"s3://{BUCKET}/big", work / "copy") / "a.bin").read_bytes() == b"a" * 600
    assert sorted(p.name for p in work.iterdir()) == ["copy", "dest"]
