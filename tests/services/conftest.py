"""Real services for tests/services, started once per session on 127.0.0.1 and stopped by PID:
SeaweedFS (S3), a private PostgreSQL cluster, an MLflow tracking server started with
``detflow server`` (PostgreSQL backend store + S3 artifact destination), and one local Ray.

A service that cannot start fails every test that needs it, with the reason (never a skip):
``.ci/services.sh`` installs what they need.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from services import MlflowServer, PostgresCluster, SeaweedS3, ServiceUnavailable, _wait_port  # noqa: E402

ARTIFACT_BUCKET = "mlflow-artifacts"
RUNS_BUCKET = "detflow-runs"


class DetflowServer(MlflowServer):
    """The same server as :class:`MlflowServer`, started through ``detflow server`` (the team command)."""

    def start(self) -> "DetflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "detflow-server.log"
        # the database URL (with its password) goes through the environment, never a command line
        cmd = [sys.executable, "-m", "detflow", "server", "--artifacts-destination", self.artifacts_destination,
               "--port", str(self.port)]
        env = {**os.environ, **self.env, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_BACKEND_STORE_URI": self.backend_uri}
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        _wait_port(self.port, self.proc, 180, "detflow server", log)
        self.log = log
        return self


def _start(service, what: str):
    try:
        return service.start()
    except (ServiceUnavailable, OSError) as exc:
        service.stop()
        pytest.fail(f"{what} could not start (run .ci/services.sh to install it): {exc}", pytrace=False)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """SeaweedFS answering S3 on a free loopback port, with the buckets the tests use."""
    server = _start(SeaweedS3(tmp_path_factory.mktemp("seaweedfs")), "SeaweedFS (S3)")
    try:
        for bucket in (ARTIFACT_BUCKET, RUNS_BUCKET):
            server.create_bucket(bucket)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A private PostgreSQL cluster (database ``detflow`` created; more with ``.create_database``)."""
    cluster = _start(PostgresCluster(tmp_path_factory.mktemp("pg")), "PostgreSQL")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)  # its own /tmp dir (outside pytest's)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3, postgres):
    """``detflow server`` with a PostgreSQL backend store and S3 artifacts (proxied)."""
    postgres.create_database("mlflow")
    server = DetflowServer(tmp_path_factory.mktemp("mlflow_server"), backend_uri=postgres.url("mlflow", "psycopg2"),
                           artifacts_destination=f"s3://{ARTIFACT_BUCKET}/", env=s3.env())
    server = _start(server, "the MLflow tracking server")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def services_env(tmp_path_factory, s3, mlflow_server):
    """Environment for detflow processes using the services: AWS_* (S3), the tracking server, a
    private DETFLOW_HOME. Also exported into this process (Ray workers started later inherit it)."""
    env = {**s3.env(), "MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_DISABLE_TELEMETRY": "true",
           "DETFLOW_HOME": str(tmp_path_factory.mktemp("detflow_home")), "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update(env)
    return env


@dataclass
class SessionRay:
    """This session's Ray: ``address`` (GCS) and whether its workers carry the services' env (true
    when this fixture started it after exporting ``services_env``; a Ray another test module started
    earlier does not have the AWS_* variables)."""

    address: str
    has_services_env: bool


@pytest.fixture(scope="session")
def ray_address(services_env) -> SessionRay:
    """This session's Ray (reused when already initialised; else 2 CPUs, no dashboard)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield SessionRay(ray.get_runtime_context().gcs_address, started)
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def child_env(services_env, ray_address):
    """``child_env(needs_s3_workers=False, **extra)``: environment of a detflow subprocess: this one +
    the services + RAY_ADDRESS of the session's Ray, unless its Ray workers must write to S3 and the
    session's Ray lacks the AWS variables (the subprocess then starts its own local Ray)."""

    def make(needs_s3_workers: bool = False, **extra: str) -> dict[str, str]:
        env = {**os.environ, **services_env, **extra}
        if ray_address.has_services_env or not needs_s3_workers:
            env["RAY_ADDRESS"] = ray_address.address
        else:
            env.pop("RAY_ADDRESS", None)
        return env

    return make


# A tiny real workflow: synthetic data -> RTMDet-tiny (1 Ray Train worker, 2 short epochs), its model
# registered with the alias ``candidate``. Run once per session through ``detflow run``.
TINY_WORKFLOW = {
    "name": "svc-tiny",
    "registered_model": "svc-tiny-rtmdet",
    "defaults": {"model": "rtmdet_tiny", "data": "synth", "image_size": 64,
                 "scaling": {"workers": 1, "cpus_per_worker": 1}},
    "steps": [
        {"id": "synth", "uses": "synth", "with": {"num_images": 12, "image_size": 64, "num_classes": 2, "seed": 0}},
        {"id": "train", "uses": "train", "needs": ["synth"], "with": {
            "recipe": {"name": "rtmdet", "mosaic": {"max_cached_images": 6}, "mixup": {"max_cached_images": 3}},
            "train": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 2, "eval_interval": 2,
                      "optimizer": {"lr": 0.002, "scale_lr_by_batch": False}, "schedule": {"warmup_iters": 1}},
            "checkpointing": {"every": 1, "keep_last": 1}}},
    ],
}


@dataclass
class FinishedWorkflow:
    """A ``detflow run`` that finished: its JSON result, state URL and tracking server."""

    result: dict
    state_url: str
    tracking_url: str
    experiment: str
    registered_model: str


@pytest.fixture(scope="session")
def state_url(postgres):
    """SQLAlchemy (psycopg 3) URL of the workflow state database on the session's PostgreSQL."""
    postgres.create_database("state")
    return postgres.url("state")


def run_cli(args: list[str], env: dict[str, str], timeout: float = 420) -> subprocess.CompletedProcess:
    """``python -m detflow ARGS`` in a subprocess; raises with its output when it fails."""
    proc = subprocess.run([sys.executable, "-m", "detflow", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode:
        raise AssertionError(f"detflow {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    return proc


def cli_json(stdout: str) -> dict:
    """The indented JSON document that ends a ``--json`` command's output (after its log lines)."""
    text = "\n" + stdout
    return json.loads(text[text.rindex("\n{\n") + 1:])


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory, mlflow_server, state_url, child_env) -> FinishedWorkflow:
    """TINY_WORKFLOW run to completion: state in PostgreSQL, lineage on the server (PostgreSQL + S3)."""
    path = tmp_path_factory.mktemp("wf") / "svc-tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_WORKFLOW, sort_keys=False))
    proc = run_cli(["run", str(path), "--state-url", state_url, "--json"], child_env())
    result = cli_json(proc.stdout)
    return FinishedWorkflow(result, state_url, mlflow_server.url, TINY_WORKFLOW["name"], TINY_WORKFLOW["registered_model"])
