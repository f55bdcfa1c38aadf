"""Real services for tests/services, started once per session on 127.0.0.1 and stopped by PID:
SeaweedFS (S3), a private PostgreSQL cluster, an MLflow tracking server started with
``detflow server`` (PostgreSQL backend store + S3 artifact destination), and one local Ray.

A service that cannot start fails every test that needs it, with the reason (never a skip):
``.ci/services.sh`` installs what they need.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from cli import cli_json, run_cli  # noqa: E402 — used by the tests' fixtures below
from cluster import RayCluster  # noqa: E402
from scratch import LASTING_ENV, lasting_dir  # noqa: E402
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
    server = _start(SeaweedS3(lasting_dir(tmp_path_factory, "seaweedfs")), "SeaweedFS (S3)")
    try:
        for bucket in (ARTIFACT_BUCKET, RUNS_BUCKET):
            server.create_bucket(bucket)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A private PostgreSQL cluster (database ``detflow`` created; more with ``.create_database``)."""
    cluster = _start(PostgresCluster(lasting_dir(tmp_path_factory, "pg")), "PostgreSQL")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)  # its own /tmp dir (outside pytest's)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3, postgres):
    """``detflow server`` with a PostgreSQL backend store and S3 artifacts (proxied)."""
    postgres.create_database("mlflow")
    server = DetflowServer(lasting_dir(tmp_path_factory, "mlflow_server"), backend_uri=postgres.url("mlflow", "psycopg2"),
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
           "DETFLOW_HOME": str(lasting_dir(tmp_path_factory, "detflow_home")), "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update(env)
    LASTING_ENV.update(env)
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
    """This session's Ray (reused when already initialised; else 2 CPUs, started as detflow starts it)."""
    import ray

    from detflow.ray_env import init_ray

    started = init_ray(num_cpus=2, log_to_driver=False, configure_logging=False)
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
    "kind": "workflow",
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
            "checkpoint": {"every": 1, "keep_last": 1}}},
    ],
}


@dataclass
class ClusterServices:
    """The two-node Ray cluster and what its nodes and a submitter use.

    ``node_env``: what every node has in its own environment (S3 credentials, the tracking URI, the
    state URL *without* its password and ``PGPASSWORD``), as Kubernetes secrets would give it.
    ``client_env(**extra)``: a submitter's environment (the same services, no ``RAY_ADDRESS``).
    ``secrets``: every secret value, for the tests that assert none leaks.
    """

    cluster: RayCluster
    node_env: dict[str, str]
    state_url: str
    tracking_url: str
    storage: str
    secrets: tuple[str, ...]

    def client_env(self, **extra: str) -> dict[str, str]:
        return {**self.node_env, "DETFLOW_HOME": str(self.cluster.root / "client_home"), **extra}


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, s3, postgres, mlflow_server) -> ClusterServices:
    """Two Ray nodes (``ray start --head`` + ``ray start --address``), 1 CPU each, custom resources
    ``node_a`` (head, 127.0.0.2) and ``node_b`` (127.0.0.3), beside SeaweedFS (S3, storage and MLflow
    artifacts), PostgreSQL (workflow state) and the MLflow server; stopped by PID."""
    postgres.create_database("cluster_state")
    s3.create_bucket("detflow-cluster")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "DETFLOW_", "MLFLOW_"))}
    env.update(s3.env(), MLFLOW_TRACKING_URI=mlflow_server.url, MLFLOW_DISABLE_TELEMETRY="true",
               DETFLOW_STATE_URL=postgres.url("cluster_state", with_password=False), PGPASSWORD=postgres.password,
               RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    cluster = RayCluster(lasting_dir(tmp_path_factory, "ray_cluster"), env)
    try:
        cluster.start(workers=1)
    except ServiceUnavailable as exc:
        cluster.stop()
        pytest.fail(f"the two-node Ray cluster could not start: {exc}", pytrace=False)
    try:
        yield ClusterServices(cluster, env, env["DETFLOW_STATE_URL"], mlflow_server.url, "s3://detflow-cluster/runs",
                              (s3.secret_key, postgres.password))
    finally:
        cluster.stop()


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


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory, mlflow_server, state_url, child_env) -> FinishedWorkflow:
    """TINY_WORKFLOW run to completion: state in PostgreSQL, lineage on the server (PostgreSQL + S3)."""
    path = lasting_dir(tmp_path_factory, "wf") / "svc-tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_WORKFLOW, sort_keys=False))
    proc = run_cli(["run", str(path), "--state-url", state_url, "--json"], child_env())
    result = cli_json(proc.stdout)
    return FinishedWorkflow(result, state_url, mlflow_server.url, TINY_WORKFLOW["name"], TINY_WORKFLOW["registered_model"])


# Real tiny searches whose trials the MLflow UI test compares (tests/services/test_mlflow_ui.py): a
# `detflow sweep` of rtmdet_tiny (sized like tests/platform/test_sweep_ray.py) and a `detflow nas` of
# SpineNet-49S proxies, both at 64 px on 12 synthetic images, tracking to the session's server.
SEARCH_BASE = {
    "kind": "train",
    "model": {"name": "rtmdet_tiny"},
    "data": {"train": {"annotations": "data/train.json", "images": "data/images"},
             "val": {"annotations": "data/val.json", "images": "data/images"}, "image_size": 64},
    "recipe": {"name": "rtmdet", "mosaic": {"max_cached_images": 8}, "mixup": {"max_cached_images": 4}},
    "train": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 2, "eval_interval": 1,
              "schedule": {"warmup_iters": 1}, "optimizer": {"scale_lr_by_batch": False}},
    "scaling": {"workers": 1, "cpus_per_worker": 1},
}
TINY_SWEEP = {
    "kind": "sweep", "name": "svc-sweep", "base": "base.yaml", "metric": "train/loss", "mode": "min",
    "space": {"train.optimizer.lr": {"loguniform": [1e-4, 0.05]},
              "model.assigner.soft_center_alpha": {"uniform": [5.0, 20.0]}},
    "num_samples": 4, "max_concurrent": 2, "search": {"name": "tpe", "seed": 0},
    "scheduler": {"name": "none"}, "resources": {"workers": 1, "cpus_per_worker": 1},
}
TINY_NAS = {
    "kind": "nas", "name": "svc-nas", "base": "spinenet.yaml", "metric": "val/bbox_mAP", "cost": "params_M",
    "num_samples": 4, "max_concurrent_trials": 2, "max_retries": 1, "search": {"name": "tpe", "seed": 0},
    "scheduler": {"name": "none"}, "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
    "proxy": {"filter_size_scale": 0.25, "image_size": 64, "epochs": 1, "max_steps_per_epoch": 2},
}


@dataclass
class FinishedSearch:
    """A finished ``detflow sweep`` or ``detflow nas``: its YAML (``config``), ``--json`` result, the
    experiment of its parent MLflow run and the run ids of its trials (the parent's child runs)."""

    config: dict
    result: dict
    tracking_url: str
    experiment_id: str
    parent_run_id: str
    trial_run_ids: list[str]


def _search_dir(root: Path, base: dict) -> Path:
    """``root/data`` (12 synthetic 64 px images) and ``root/<name>.yaml`` (the base training config)."""
    from detflow.data import generate_synthetic

    generate_synthetic(root / "data", num_images=12, image_size=64, num_classes=2, seed=0)
    (root / f"{base['name']}.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    return root


def _finished_search(command: str, root: Path, search: dict, tracking_url: str, env: dict) -> FinishedSearch:
    """Run ``detflow COMMAND root/NAME.yaml --json`` and find its parent run and trial runs on the server."""
    from mlflow.tracking import MlflowClient

    path = root / f"{search['name']}.yaml"
    path.write_text(yaml.safe_dump(search, sort_keys=False))
    result = cli_json(run_cli([command, str(path), "--json"], env, timeout=1200).stdout)
    client = MlflowClient(tracking_uri=tracking_url)
    parent = client.get_run(result["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id], max_results=100,
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return FinishedSearch(search, result, tracking_url, parent.info.experiment_id, parent.info.run_id,
                          [c.info.run_id for c in children])


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, mlflow_server, child_env) -> FinishedSearch:
    """TINY_SWEEP run by ``detflow sweep`` to the server: 4 TPE trials (2 at a time) over the learning
    rate and the assigner's soft-center alpha, each a Ray Train run of rtmdet_tiny."""
    root = _search_dir(lasting_dir(tmp_path_factory, "sweep"), {**SEARCH_BASE, "name": "base"})
    return _finished_search("sweep", root, TINY_SWEEP, mlflow_server.url, child_env())


@pytest.fixture(scope="session")
def tiny_nas(tmp_path_factory, mlflow_server, child_env) -> FinishedSearch:
    """TINY_NAS (4 SpineNet-49S proxies, 2 at a time, val AP against params_M) run by ``detflow nas``."""
    base = {**SEARCH_BASE, "name": "spinenet", "model": {"name": "spinenet_49s"},
            "recipe": {"name": "retinanet", "ratio_range": [0.75, 1.25]},
            "train": {**SEARCH_BASE["train"], "optimizer": {"name": "adamw", "lr": 0.002, "scale_lr_by_batch": False}}}
    root = _search_dir(lasting_dir(tmp_path_factory, "nas"), base)
    return _finished_search("nas", root, TINY_NAS, mlflow_server.url, child_env())
