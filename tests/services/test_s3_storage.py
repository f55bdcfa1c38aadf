"""S3 storage against a real SeaweedFS: boto3 round trips, ``detflow.storage`` (Ray Train storage,
upload/download/materialize, redaction), ``detflow server`` hygiene, and a training run whose
checkpoints land in S3 and which resumes from S3 after its driver is killed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.services

RUNS_BUCKET = "detflow-runs"


def _keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


# ----------------------------------------------------------------------------------- S3 basics
def test_boto3_round_trip_and_enforced_credentials(s3):
    from botocore.exceptions import ClientError

    client = s3.client()
    client.put_object(Bucket=RUNS_BUCKET, Key="roundtrip/hello.txt", Body=b"detflow \x00\xff")
    assert client.get_object(Bucket=RUNS_BUCKET, Key="roundtrip/hello.txt")["Body"].read() == b"detflow \x00\xff"
    assert "roundtrip/hello.txt" in _keys(client, RUNS_BUCKET, "roundtrip/")

    import boto3
    from botocore.config import Config

    intruder = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                            aws_secret_access_key="wrong-secret-000000", region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as err:
        intruder.get_object(Bucket=RUNS_BUCKET, Key="roundtrip/hello.txt")
    assert err.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId"}


def test_settings_come_from_the_standard_variables(s3, monkeypatch):
    from detflow.storage import s3_settings

    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    settings = s3_settings()
    assert settings.endpoint == s3.endpoint and settings.endpoint_host == f"127.0.0.1:{s3.port}"
    assert settings.scheme == "http" and settings.region == "us-east-1"
    assert s3.secret_key not in repr(settings) and "credentials=set" in repr(settings)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert s3_settings().endpoint == s3.endpoint  # MLflow's variable is enough


def test_upload_download_materialize(s3, tmp_path, monkeypatch):
    from detflow.errors import UserInputError
    from detflow import artifact_store
    from detflow.storage import download_dir, materialize, upload_dir

    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_bytes(os.urandom(70_000))
    (src / "meta.json").write_text('{"epoch": 3}')
    (src / "sub" / "deep.txt").write_text("x")
    keys = upload_dir(src, f"s3://{RUNS_BUCKET}/io/ckpt")
    assert sorted(keys) == ["io/ckpt/meta.json", "io/ckpt/model.pt", "io/ckpt/sub/deep.txt"]
    assert sorted(_keys(s3.client(), RUNS_BUCKET, "io/")) == sorted(keys)

    back = download_dir(f"s3://{RUNS_BUCKET}/io/ckpt/", tmp_path / "back")
    for rel in ("model.pt", "meta.json", "sub/deep.txt"):
        assert (back / rel).read_bytes() == (src / rel).read_bytes()
    local = materialize(f"s3://{RUNS_BUCKET}/io/ckpt")
    assert json.loads((local / "meta.json").read_text()) == {"epoch": 3}
    assert materialize(f"s3://{RUNS_BUCKET}/io/ckpt") == local  # downloaded once per process
    assert materialize(src) == src  # local paths pass through

    before = set(Path(tempfile.gettempdir()).glob("detflow-artifact-*"))
    with pytest.raises(UserInputError, match="no such file or directory") as err:
        materialize(f"s3://{RUNS_BUCKET}/io/missing")
    assert s3.secret_key not in str(err.value)
    assert set(Path(tempfile.gettempdir()).glob("detflow-artifact-*")) == before  # a failed download leaves nothing

    artifact_store.clear_cache()  # what runs at exit (and when a step ends)
    assert not local.exists()


def test_failed_transfer_message_has_no_credentials(s3, tmp_path, monkeypatch):
    from detflow.errors import RuntimeFailure
    from detflow.storage import download_dir

    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "bad-secret-that-must-not-leak")
    with pytest.raises(RuntimeFailure) as err:
        download_dir(f"s3://{RUNS_BUCKET}/io/ckpt", tmp_path / "x")
    assert "bad-secret-that-must-not-leak" not in str(err.value)
    assert f"s3://{RUNS_BUCKET}/io/ckpt" in str(err.value)


def test_ray_storage_gives_a_working_pyarrow_filesystem(s3, monkeypatch, tmp_path):
    import pickle

    import pyarrow.fs as pafs

    from detflow.storage import ray_storage

    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    path, fs = ray_storage(f"s3://{RUNS_BUCKET}/ray/")
    assert path == f"{RUNS_BUCKET}/ray" and isinstance(fs, pafs.S3FileSystem)
    fs = pickle.loads(pickle.dumps(fs))  # what Ray ships to its workers: works without the env
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with fs.open_output_stream(f"{path}/probe/x.bin") as f:
        f.write(b"abc")
    assert s3.client().get_object(Bucket=RUNS_BUCKET, Key="ray/probe/x.bin")["Body"].read() == b"abc"

    assert ray_storage(tmp_path / "runs") == (str((tmp_path / "runs").resolve()), None)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    assert ray_storage("s3://bucket/on-aws") == ("s3://bucket/on-aws", None)  # AWS: Ray resolves it


def test_redact_removes_every_kind_of_credential(monkeypatch):
    from detflow.storage import redact

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S3cr3tValue/with+chars")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTKEY")
    text = ("postgresql+psycopg2://mlflow:pg-pass@db:5432/mlflow failed; "
            "aws_secret_access_key=S3cr3tValue/with+chars key AKIATESTKEY "
            "https://b.s3/x?X-Amz-Credential=AKIA%2F2024&X-Amz-Signature=abcdef0123 password: 'hunter22'")
    out = redact(text)
    for secret in ("pg-pass", "S3cr3tValue", "AKIATESTKEY", "abcdef0123", "hunter22", "AKIA%2F2024"):
        assert secret not in out, secret
    assert "postgresql+psycopg2://***@db:5432/mlflow" in out and "X-Amz-Signature=***" in out
    assert redact("s3://bucket/prefix epoch=3 cache_key=abc") == "s3://bucket/prefix epoch=3 cache_key=abc"


# --------------------------------------------------------------------------------- detflow server
def _listen_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


def _tree_cmdlines(pid: int) -> list[str]:
    """Command lines of ``pid`` and all its descendants (``mlflow server`` runs in its own process group)."""
    from cluster import descendants

    found = []
    for member in [pid, *descendants(pid)]:
        try:
            found.append(Path(f"/proc/{member}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def test_detflow_server_is_loopback_only_and_prints_no_password(mlflow_server, postgres):
    import urllib.request

    assert _listen_addresses(mlflow_server.port) == {"0100007F"}  # 127.0.0.1 only
    cmdlines = _tree_cmdlines(mlflow_server.proc.pid)  # detflow server, mlflow server, its workers
    assert any("detflow server" in c for c in cmdlines) and any("mlflow server" in c for c in cmdlines)
    assert not [c for c in cmdlines if postgres.password in c], "database password visible in `ps`"
    log = mlflow_server.log.read_text()
    assert f"MLflow tracking server: http://127.0.0.1:{mlflow_server.port}" in log
    assert postgres.password not in log and "postgresql+psycopg2://***@127.0.0.1" in log
    with urllib.request.urlopen(f"{mlflow_server.url}/health", timeout=30) as resp:
        assert resp.status == 200


def test_detflow_server_refuses_a_bad_backend_without_leaking_it(capsys, tmp_path):
    from detflow.cli import main

    code = main(["server", "--backend-store-uri", "ftp://admin:topsecretpw@host/db",
                 "--artifacts-destination", str(tmp_path / "art")])
    err = capsys.readouterr().err
    assert code == 2 and "--backend-store-uri ftp://***@host/db" in err and "topsecretpw" not in err


# ------------------------------------------------------------------------ training on S3 storage
def _train_config(tmp_path: Path, synth) -> Path:
    split = lambda js: {"annotations": str(js), "images": str(synth.images_dir)}  # noqa: E731
    cfg = {
        "kind": "train",
        "name": "s3resume", "experiment": "services-s3", "model": {"name": "rtmdet_tiny"},
        "data": {"train": split(synth.train_json), "val": split(synth.val_json), "image_size": 64},
        "recipe": {"name": "rtmdet", "mosaic": {"max_cached_images": 6}, "mixup": {"max_cached_images": 3}},
        "train": {"epochs": 3, "batch_size": 2, "max_steps_per_epoch": 2, "eval_interval": 3,
                  "schedule": {"warmup_iters": 1}, "optimizer": {"lr": 0.002, "scale_lr_by_batch": False}},
        "scaling": {"workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every": 1, "keep_last": 3, "max_failures": 0},
        "storage": f"s3://{RUNS_BUCKET}/train",
    }
    path = tmp_path / "s3resume.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _wait_for_checkpoint(client, driver: subprocess.Popen, timeout: float) -> None:
    """Until the first checkpoint is in S3 *and* Ray Train recorded it in its run snapshot (what
    driver recovery reads)."""
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        keys = _keys(client, RUNS_BUCKET, "train/s3resume-")
        if (any("/epoch_0000-" in k and k.endswith("model.pt") for k in keys)
                and any(k.endswith("checkpoint_manager_snapshot.json") for k in keys)):
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint in S3 within {timeout:.0f}s (driver exit code {driver.poll()})")


def test_training_checkpoints_land_in_s3_and_resume_after_driver_kill(s3, mlflow_server, child_env, tmp_path):
    from mlflow.tracking import MlflowClient

    from detflow.data import generate_synthetic
    from detflow.storage import materialize

    synth = generate_synthetic(tmp_path / "synth", num_images=12, image_size=64, seed=0, val_fraction=0.25)
    cfg = _train_config(tmp_path, synth)
    env = child_env(needs_s3_workers=True)
    cmd = [sys.executable, "-m", "detflow", "train", str(cfg)]
    client = s3.client()
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_checkpoint(client, driver, timeout=240)
            assert driver.poll() is None, "the driver finished before it could be killed"
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(30)
        finally:
            if driver.poll() is None:
                driver.kill()
    first = (tmp_path / "first.log").read_text()
    marker_key = next(k for k in _keys(client, RUNS_BUCKET, "train/s3resume-") if k.endswith("detflow_run.json"))
    marker = json.loads(client.get_object(Bucket=RUNS_BUCKET, Key=marker_key)["Body"].read())

    resumed = subprocess.run([*cmd, "--resume", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["run_id"] == marker["run_id"]
    assert result["last_checkpoint"].startswith(f"s3://{RUNS_BUCKET}/train/s3resume-")

    ckpts = sorted({k.split("/")[2] for k in _keys(client, RUNS_BUCKET, marker_key.rsplit("/", 1)[0] + "/")
                    if "/epoch_" in k})
    # every epoch checkpointed to S3 (an epoch the killed driver uploaded but Ray had not recorded yet
    # is trained again: its directory then exists twice, with different timestamps)
    assert {c.split("-")[0] for c in ckpts} == {"epoch_0000", "epoch_0001", "epoch_0002"}, ckpts
    meta = json.loads((materialize(result["last_checkpoint"]) / "meta.json").read_text())
    assert meta["epoch"] == 2 and meta["resumed_from"] >= 1, meta  # continued, not restarted
    assert [h["epoch"] for h in meta["history"]] == [0, 1, 2]

    mlflow = MlflowClient(tracking_uri=mlflow_server.url)
    assert sorted(m.step for m in mlflow.get_metric_history(result["run_id"], "epoch")) == [0, 1, 2]
    run = mlflow.get_run(result["run_id"])
    leaked = [k for k, v in {**run.data.params, **run.data.tags}.items() if s3.secret_key in v or s3.access_key in v]
    assert not leaked, f"credentials in MLflow params/tags: {leaked}"
    [out] = run.outputs.model_outputs  # the checkpoint in S3 is the run's logged model too
    model = mlflow.get_logged_model(out.model_id)
    assert model.source_run_id == result["run_id"] and model.tags["detflow.checkpoint"] == result["checkpoint"]
    assert "meta.json" in {a.path for a in mlflow.list_logged_model_artifacts(out.model_id)}
    for text in (first, resumed.stdout, resumed.stderr):
        assert s3.secret_key not in text


def test_server_command_keeps_the_database_url_off_the_command_line(tmp_path):
    from detflow.errors import UserInputError
    from detflow.tracking.server import ServerSpec, is_loopback, server_command, server_env, server_url

    spec = ServerSpec("postgresql+psycopg2://u:pw-123@db:5432/mlflow", "s3://bucket/art", port=5055, workers=2)
    cmd = server_command(spec)
    assert not [a for a in cmd if "pw-123" in a]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5055"
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://bucket/art"
    env = server_env(spec, {"AWS_ENDPOINT_URL": "http://127.0.0.1:8333"})
    assert env["MLFLOW_BACKEND_STORE_URI"] == spec.backend_store_uri
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:8333" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    local = server_command(ServerSpec("sqlite:///" + str(tmp_path / "m.db"), str(tmp_path / "art")))
    assert local[local.index("--artifacts-destination") + 1] == (tmp_path / "art").as_uri()
    assert server_url("0.0.0.0", 80) == "http://127.0.0.1:80" and not is_loopback("0.0.0.0") and is_loopback("::1")
    with pytest.raises(UserInputError, match="expected s3://bucket/prefix or a directory"):
        server_command(ServerSpec("sqlite:///x.db", "ftp://host/art"))
