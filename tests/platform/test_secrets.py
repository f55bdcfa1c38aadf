"""Secrets never leave the node environment (no services, no Ray cluster): what the driver hands a
step task, what ``detflow submit`` hands the Ray Jobs API, what a Train worker and a Tune trial get;
``detflow submit`` refuses a state database only this machine reaches; and how ``status`` reconciles a
submitted run with its ended Ray job (a fake Jobs API client)."""
from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import pytest
import yaml

from detflow import storage
from detflow.cli import main

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIA-ID-7f3k9q",
    "AWS_SECRET_ACCESS_KEY": "s3-Secret-Key-8d2m",
    "AWS_SESSION_TOKEN": "sess-Token-4x1z",
    "PGPASSWORD": "pg-Env-Pass-2k8s",
}
URL_SECRETS = ("pg-Url-Pass-5h7w", "mlf-Url-Pass-9j4v")
STATE_URL = f"postgresql+psycopg://ci:{URL_SECRETS[0]}@db.internal:5432/state"
TRACKING_URI = f"http://mlf-user:{URL_SECRETS[1]}@mlflow.internal:5000"


@pytest.fixture
def secret_env(tmp_path, monkeypatch):
    """An environment full of secrets (and every PUBLIC_ENV variable restored after the test)."""
    for name in storage.PUBLIC_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DETFLOW_STATE_URL", STATE_URL)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", TRACKING_URI)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.internal:8333")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "submitter_home"))
    monkeypatch.setattr(storage, "_NODE_ENV", None)  # apply_public_env's per-process snapshot
    return tuple(SECRETS.values()) + URL_SECRETS


def _assert_clean(blob: bytes | str, secrets: tuple[str, ...], what: str) -> None:
    data = blob if isinstance(blob, bytes) else blob.encode()
    leaked = [s for s in secrets if s.encode() in data]
    assert not leaked, f"{what} carries secret values {leaked}"


def _workflow(tmp_path: Path) -> Path:
    """A workflow whose train step names a config file that names a spec file (both uploaded)."""
    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "spec.yaml").write_text("blocks: []\n")
    (cfg_dir / "train.yaml").write_text("kind: train\nmodel: {name: spinenet, spec: spec.yaml}\n"
                                        "data: {train: {annotations: data/train.json, images: data/images}}\n")
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({
        "kind": "workflow", "name": "secrets", "defaults": {"model": "rtmdet_tiny", "data": "synth", "storage": "s3://runs/detflow"},
        "steps": [{"id": "synth", "uses": "synth", "with": {"num_images": 4, "image_size": 64}},
                  {"id": "train", "uses": "train", "needs": ["synth"], "with": {"config": "cfgs/train.yaml"}}]}))
    return wf


class _FakeRemote:
    """Stands in for ``ray.remote(execute_step)``: records the task arguments instead of running them."""

    def __init__(self):
        self.calls: list[tuple] = []

    def options(self, **_):
        return self

    def remote(self, *args):
        self.calls.append(args)
        return object()


def test_step_task_arguments_carry_no_secret(secret_env, tmp_path):
    """The StepContext the driver builds in ``_Driver.launch`` (pickled into the Ray task) has no
    secret: only public settings, URLs without passwords, no DETFLOW_HOME."""
    from detflow.workflows.engine import _Driver
    from detflow.workflows.lint import load_workflow
    from detflow.workflows.state import StateStore

    wf = load_workflow(_workflow(tmp_path))
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.create_run("r1", wf.name, wf.to_dict(), [(s.id, s.uses) for s in wf.steps])
    driver = _Driver(wf, "r1", store, None, lambda _msg: None)
    driver.remote = fake = _FakeRemote()
    driver.launch("synth")
    (args,) = fake.calls
    ctx = args[-1]
    _assert_clean(pickle.dumps(args), secret_env, "the step task's arguments")
    assert ctx.env["DETFLOW_STATE_URL"] == "postgresql+psycopg://ci@db.internal:5432/state"
    assert ctx.env["MLFLOW_TRACKING_URI"] == "http://mlf-user@mlflow.internal:5000"
    assert ctx.env["AWS_ENDPOINT_URL"] == "http://s3.internal:8333"
    assert not {"DETFLOW_HOME", *SECRETS} & set(ctx.env)


def test_apply_env_never_replaces_a_nodes_own_settings(secret_env, monkeypatch):
    """On the node: its own (complete) URL wins over the stripped one forwarded; gaps are filled, and
    what one step filled in does not stick to the next step of the same worker process."""
    from detflow.workflows.context import StepContext

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    forwarded = {"MLFLOW_TRACKING_URI": "http://mlf-user@mlflow.internal:5000", "AWS_DEFAULT_REGION": "eu-west-1",
                 "AWS_SECRET_ACCESS_KEY": "forwarded-by-mistake"}
    StepContext("r", "s", "synth", "wf", "/tmp/x", env=forwarded).apply_env()
    assert os.environ["MLFLOW_TRACKING_URI"] == TRACKING_URI
    assert os.environ["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRETS["AWS_SECRET_ACCESS_KEY"]
    StepContext("r", "t", "synth", "wf", "/tmp/x", env={"AWS_DEFAULT_REGION": "us-east-2"}).apply_env()
    assert os.environ["AWS_DEFAULT_REGION"] == "us-east-2"
    StepContext("r", "u", "synth", "wf", "/tmp/x", env={}).apply_env()
    assert "AWS_DEFAULT_REGION" not in os.environ and os.environ["MLFLOW_TRACKING_URI"] == TRACKING_URI


def test_submitted_job_carries_no_secret_and_uploads_its_configs(secret_env, tmp_path):
    """The Jobs API request ``detflow submit`` builds: the cluster's interpreter, the state URL without
    its password, nothing else from the environment; the config files are staged in the working_dir."""
    from detflow import sdk
    from detflow.workflows.lint import load_workflow

    wf = load_workflow(_workflow(tmp_path))
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    job = sdk.prepare_job(wf, "secrets-1", job_dir, state_url=sdk.cluster_state_url(), python=sdk.cluster_python())
    files = {p.relative_to(job_dir).as_posix(): p.read_bytes() for p in job_dir.rglob("*") if p.is_file()}
    _assert_clean(json.dumps([job.entrypoint, job.runtime_env, job.metadata], default=str), secret_env, "the job")
    for name, data in files.items():
        _assert_clean(data, secret_env, f"uploaded file {name}")
    assert job.entrypoint == ("python -m detflow run workflow.yaml --run-id secrets-1 "
                              "--state-url postgresql+psycopg://ci@db.internal:5432/state")
    assert sys.executable not in job.entrypoint
    assert set(job.runtime_env) == {"working_dir"}
    assert set(files) == {"workflow.yaml", "configs/01-train.yaml", "configs/02-spec.yaml"}
    staged = load_workflow(job_dir / "workflow.yaml")  # as the driver on the cluster loads it
    config = staged.step("train").with_.config
    assert config == str((job_dir / "configs/01-train.yaml").resolve())
    train_cfg = yaml.safe_load(files["configs/01-train.yaml"])
    assert train_cfg["model"]["spec"] == "configs/02-spec.yaml"
    assert train_cfg["data"]["train"]["annotations"] == str(tmp_path / "cfgs/data/train.json")
    assert any("data/train.json" in w for w in job.warnings)


def test_submit_python_comes_from_the_option_or_the_variable(monkeypatch):
    from detflow import sdk

    monkeypatch.delenv(sdk.CLUSTER_PYTHON_ENV, raising=False)
    assert sdk.cluster_python() == "python"
    monkeypatch.setenv(sdk.CLUSTER_PYTHON_ENV, "/opt/venv/bin/python")
    assert sdk.cluster_python() == "/opt/venv/bin/python"
    assert sdk.cluster_python("python3.11") == "python3.11"


def test_train_workers_and_tune_trials_carry_no_secret(secret_env):
    """The TorchTrainer a training builds (its worker runtime_env and its S3 storage filesystem, both
    pickled into Ray) and a Tune trial's arguments hold no secret."""
    import ray.cloudpickle as cloudpickle

    from detflow.config import TrainConfig, load_config
    from detflow.train.runner import _build_trainer, _worker_env
    from detflow.tune.config import SweepConfig
    from detflow.tune.runner import _public_sweep, _trial_env

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(TrainConfig, root / "workflows/configs/smoke_train.yaml").model_copy(
        update={"storage": "s3://runs/detflow"})
    trainer = _build_trainer(cfg, "smoke", {"cfg": {}}, TRACKING_URI, False)
    _assert_clean(cloudpickle.dumps(trainer), secret_env, "the TorchTrainer")
    env = trainer.run_config.worker_runtime_env["env_vars"]
    assert "MLFLOW_TRACKING_URI" not in env and "DETFLOW_HOME" not in env  # the node's own are used
    assert _worker_env(cfg, "sqlite:////shared/mlflow.db")["MLFLOW_TRACKING_URI"] == "sqlite:////shared/mlflow.db"

    sweep = SweepConfig(name="s", base="b.yaml", space={"train.epochs": 1},
                        search={"storage": f"postgresql://optuna:{URL_SECRETS[0]}@db/optuna"})
    _assert_clean(cloudpickle.dumps([_trial_env(), _public_sweep(sweep)]), secret_env, "a Tune trial's arguments")
    assert _trial_env() == {"MLFLOW_TRACKING_URI": "http://mlf-user@mlflow.internal:5000"}


def test_strip_credentials_keeps_the_user_and_drops_secret_parameters():
    assert storage.strip_credentials(STATE_URL) == "postgresql+psycopg://ci@db.internal:5432/state"
    assert storage.strip_credentials("http://h/x?a=1&password=p&token=t#f") == "http://h/x?a=1#f"
    assert storage.strip_credentials("s3://bucket/key") == "s3://bucket/key"
    env = {"DETFLOW_STATE_URL": STATE_URL, "AWS_SECRET_ACCESS_KEY": "k" * 8, "DETFLOW_HOME": "/home/me"}
    assert storage.public_env(env) == {"DETFLOW_STATE_URL": "postgresql+psycopg://ci@db.internal:5432/state"}
    assert storage.public_env(env, keep_stripped_urls=False) == {}
    assert storage.secret_values(env) == {"k" * 8, URL_SECRETS[0]}


@pytest.mark.parametrize("given", [None, "sqlite:///{home}/mine.db"])
def test_submit_refuses_a_sqlite_state_url_before_writing_anything(given, tmp_path, monkeypatch, capsys):
    """`detflow submit` with SQLite state (given, or the default) exits 2 naming --state-url and
    DETFLOW_STATE_URL, and creates no database (so no run row)."""
    home = tmp_path / "home"
    monkeypatch.setenv("DETFLOW_HOME", str(home))
    monkeypatch.delenv("DETFLOW_STATE_URL", raising=False)
    wf = tmp_path / "wf.yaml"
    wf.write_text("kind: workflow\nname: local\nsteps:\n  - {id: synth, uses: synth, with: {num_images: 4, image_size: 64}}\n")
    args = ["submit", str(wf), "--address", "http://127.0.0.1:1"]
    if given:
        args += ["--state-url", given.format(home=home)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--state-url" in err and "DETFLOW_STATE_URL" in err and "sqlite:///" in err
    assert not (home / "workflows.db").exists() and not (home / "mine.db").exists()


class _FakeJobs:
    """The Jobs API of a cluster whose job ended with ``status``; like Ray's, a stopped job still
    reads as before for ``lag`` more status reads (Ray stops a job asynchronously)."""

    def __init__(self, status: str, lag: int = 0):
        from ray.job_submission import JobStatus

        self.status, self.stopped, self.lag, self.reads = JobStatus(status), [], lag, 0

    def get_job_status(self, job_id):
        from ray.job_submission import JobStatus

        self.reads += 1
        if self.stopped and not self.status.is_terminal():
            self.lag -= 1
            if self.lag < 0:
                self.status = JobStatus.STOPPED
        return self.status

    def get_job_logs(self, job_id):
        return "[12:00:00] run r: 1 steps\nTraceback: boom\n"

    def stop_job(self, job_id):
        self.stopped.append(job_id)
        return True


@pytest.mark.parametrize("job_status, cancel, expected_status, expected_error", [
    ("SUCCEEDED", False, "running", "driver lost its state: the Ray job SUCCEEDED but the run has no final state"),
    ("FAILED", False, "failed", "Ray job sub-1 failed: Traceback: boom"),
    ("STOPPED", True, "cancelled", "cancelled"),
    ("RUNNING", False, "running", None),
])
def test_status_reconciles_a_submitted_run_with_its_ended_job(job_status, cancel, expected_status, expected_error,
                                                             tmp_path, monkeypatch):
    """A job that SUCCEEDED without a final state row is never read as failed; a failed one is; a job
    stopped after a cancel request ends the run cancelled; a running job changes nothing."""
    from detflow import sdk
    from detflow.workflows.state import StateStore

    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore(url)
    store.create_run("sub-1", "wf", {"name": "wf", "steps": []}, [("a", "synth")], address="http://127.0.0.1:1")
    store.update_run("sub-1", job_id="sub-1", status="running")
    if cancel:
        store.request_cancel("sub-1")
    jobs = _FakeJobs(job_status)
    monkeypatch.setattr(sdk, "_job_client", lambda address: jobs)
    result = sdk.status("sub-1", state_url=url)
    assert result.status == expected_status
    if expected_error is None:
        assert result.error is None
    else:
        assert result.error and result.error.startswith(expected_error), result.error
    assert sdk.cancel("sub-1", state_url=url) in ("cancelled", "failed") and jobs.stopped == ["sub-1"]


def test_cancel_returns_once_ray_says_the_job_stopped(tmp_path, monkeypatch):
    """Ray stops a job asynchronously; ``detflow cancel`` polls until the job reads STOPPED, so a
    returned cancel means the job has ended."""
    from detflow import sdk
    from detflow.workflows.state import StateStore

    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore(url)
    store.create_run("sub-1", "wf", {"name": "wf", "steps": []}, [("a", "synth")], address="http://127.0.0.1:1")
    store.update_run("sub-1", job_id="sub-1", status="running")
    jobs = _FakeJobs("RUNNING", lag=3)
    monkeypatch.setattr(sdk, "_job_client", lambda address: jobs)
    assert sdk.cancel("sub-1", state_url=url) == "cancelled"
    assert jobs.stopped == ["sub-1"] and jobs.status.value == "STOPPED" and jobs.reads == 4
