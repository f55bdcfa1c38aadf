"""infra/ files, validated as far as this machine allows (no Docker engine, no Kubernetes here):
they parse, expose services on 127.0.0.1 only, have health checks, and install detflow the way
scripts/setup.sh does."""
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def _load(rel):
    return yaml.safe_load((INFRA / rel).read_text())


def test_compose_services_are_local_and_healthchecked():
    compose = _load("docker/compose.yaml")
    assert set(compose["services"]) == {"postgres", "s3", "mlflow"}
    for name, svc in compose["services"].items():
        assert "healthcheck" in svc, name
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert set(compose["volumes"]) == {"pgdata", "s3data"}
    command = compose["services"]["mlflow"]["command"]
    assert "--backend-store-uri postgresql://" in command and "--artifacts-destination s3://" in command


def test_dockerfile_installs_like_setup_script():
    dockerfile = (INFRA / "docker" / "Dockerfile.gpu").read_text()
    setup = (INFRA.parent / "scripts" / "setup.sh").read_text()
    assert 'pip install -q -e ".[$EXTRAS]"' in setup and "pip install --no-cache-dir -e" in dockerfile
    assert "torchao==0.18.0" in dockerfile and "torchao==0.18.0" in setup
    assert "import torch, tensorrt" in dockerfile


@pytest.mark.parametrize("rel, kind", [("kuberay/raycluster.yaml", "RayCluster"), ("kuberay/rayjob.yaml", "RayJob")])
def test_kuberay_manifests(rel, kind):
    doc = _load(rel)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups, "no GPU worker group"
    if kind == "RayJob":
        assert doc["spec"]["entrypoint"].startswith("python -m detflow run ")


def test_cluster_launcher_config():
    cfg = _load("ray/cluster-gpu.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "docker"):
        assert key in cfg
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])
