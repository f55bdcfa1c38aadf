"""infra/ checked against the schemas of the programs that read it (this machine has no Kubernetes and
no Docker engine): KubeRay's CRDs, Kubernetes' NetworkPolicy schema, the Ray cluster launcher's schema
(shipped in the ray package) and the Compose specification; the fixtures and their versions are in
tests/fixtures/*/README.md. Each check is shown to catch a misspelt field. Then the security properties
that docs/cluster.md promises: token auth, no exposed port, a NetworkPolicy that matches the pinned Ray
ports, no secret value in any file."""
from __future__ import annotations

import copy
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
FIXTURES = ROOT / "tests" / "fixtures"
INFRA_YAML = sorted(p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*.yaml"))
# The KubeRay CRD fixtures are 2.3 MB of YAML: libyaml reads them in well under a second.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _docs(rel: str) -> list[dict]:
    return [d for d in yaml.load_all((INFRA / rel).read_text(), Loader=_LOADER) if d is not None]


# --- schemas ------------------------------------------------------------------------------------------

def closed_world(schema: dict) -> dict:
    """A copy of a Kubernetes structural schema in which every object that declares ``properties``
    admits no other field. The API server prunes undeclared fields of a custom resource without an
    error, so a misspelt field would otherwise pass validation and silently do nothing. Objects with
    ``x-kubernetes-preserve-unknown-fields`` or with an ``additionalProperties`` schema (maps) stay
    open. Only the structural positions (``properties``, ``items``, ``additionalProperties``) are
    walked: value validations (``allOf``/``anyOf``/...) may not declare fields of their own there.
    The other ``x-kubernetes-*`` extensions are left to jsonschema, which ignores unknown keywords."""
    node = dict(schema)
    if "properties" in node:
        node["properties"] = {name: closed_world(sub) for name, sub in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = closed_world(node[key])
    return node


def schema_errors(instance, schema: dict, registry: Registry | None = None) -> list[str]:
    """Every violation of ``schema`` as 'path: message'. A schema without ``$schema`` (the OpenAPI v3
    schemas of CRDs) is read as draft 4, whose semantics OpenAPI 3.0 schema objects follow."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    validator = cls(schema) if registry is None else cls(schema, registry=registry)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                  for e in validator.iter_errors(instance))


@functools.cache
def _crd_openapi_schema(kind: str) -> dict:
    crd = yaml.load((FIXTURES / "kuberay" / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=_LOADER)
    assert crd["spec"]["names"]["kind"] == kind
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


@functools.cache
def _crd_schema(kind: str) -> dict:
    return closed_world(_crd_openapi_schema(kind))


@functools.cache
def _networkpolicy_schema() -> tuple[dict, Registry]:
    folder = FIXTURES / "kubernetes" / "v1.37.0-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return json.loads((folder / "networkpolicy-networking-v1.json").read_text()), registry


@functools.cache
def _ray_launcher_schema() -> dict:
    # Located without importing ray (slow): the schema `ray up` validates its config against.
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent
    return json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())


@functools.cache
def _compose_schema() -> dict:
    return json.loads((FIXTURES / "compose" / "compose-spec.json").read_text())


@functools.cache
def _has_docker_compose() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "compose", "version"], capture_output=True).returncode == 0


def kubernetes_errors(doc: dict) -> list[str]:
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if api == "ray.io/v1" and kind in ("RayCluster", "RayJob"):
        errors = schema_errors(doc, _crd_schema(kind))
    elif api == "networking.k8s.io/v1" and kind == "NetworkPolicy":
        errors = schema_errors(doc, *_networkpolicy_schema())
    else:
        errors = ["(top): no schema in tests/fixtures for this kind"]
    return [f"{kind} {doc.get('metadata', {}).get('name')}: {e}" for e in errors]


def compose_errors(doc: dict) -> list[str]:
    errors = schema_errors(doc, _compose_schema())
    if _has_docker_compose():  # Compose itself, where its plugin is installed (not on this project's machines)
        text = yaml.safe_dump(doc)
        env = {**os.environ, **{name: "placeholder" for name in re.findall(r"\$\{(\w+)", text)}}
        r = subprocess.run(["docker", "compose", "--project-directory", str(INFRA / "docker"), "-f", "-", "config",
                            "--quiet"], input=text, env=env, capture_output=True, text=True, timeout=120)
        if r.returncode:
            errors.append(f"docker compose config: {r.stderr.strip()}")
    return errors


def infra_errors(rel: str, docs: list[dict]) -> list[str]:
    """The consumer's schema check for ``infra/<rel>``."""
    if rel.startswith("kuberay/"):
        return [e for doc in docs for e in kubernetes_errors(doc)]
    if rel.startswith("ray/"):
        return [e for doc in docs for e in schema_errors(doc, _ray_launcher_schema())]
    if rel.startswith("docker/"):
        return [e for doc in docs for e in compose_errors(doc)]
    raise AssertionError(f"infra/{rel}: no schema check for this folder; add one to infra_errors")


@pytest.mark.parametrize("rel", INFRA_YAML)
def test_infra_file_matches_its_consumers_schema(rel):
    assert infra_errors(rel, _docs(rel)) == []


def _rename_key(doc: dict, path: tuple, new_key: str) -> dict:
    doc = copy.deepcopy(doc)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[new_key] = parent.pop(path[-1])
    return doc


# (file, document index, path to a field, misspelling): one per infra file.
TYPOS = [
    ("docker/compose.yaml", 0, ("services", "postgres", "healthcheck", "interval"), "intervall"),
    ("kuberay/networkpolicy.yaml", 1, ("spec", "ingress", 0, "ports", 0, "endPort"), "endport"),
    ("kuberay/raycluster.yaml", 0, ("spec", "headGroupSpec", "rayStartParams"), "rayStartParms"),
    ("kuberay/rayjob.yaml", 0,
     ("spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "containers", 0, "envFrom"), "envfrom"),
    ("ray/cluster-gpu.yaml", 0, ("docker", "pull_before_run"), "pull_befor_run"),
]


def test_every_infra_file_has_a_typo_check():
    assert sorted(rel for rel, *_ in TYPOS) == INFRA_YAML


@pytest.mark.parametrize("rel, index, path, typo", TYPOS, ids=[t[0] for t in TYPOS])
def test_schema_check_catches_a_misspelt_field(rel, index, path, typo):
    docs = _docs(rel)
    docs[index] = _rename_key(docs[index], path, typo)
    errors = infra_errors(rel, docs)
    assert any(repr(typo) in e for e in errors), errors


def test_crd_schema_alone_would_accept_a_misspelt_field():
    """Why closed_world exists: the CRD's own schema lets an unknown field through (the API server
    would prune it: the cluster would start with KubeRay's defaults instead of ours)."""
    doc = _rename_key(_docs("kuberay/raycluster.yaml")[0], ("spec", "headGroupSpec", "rayStartParams"), "rayStartParms")
    assert schema_errors(doc, _crd_openapi_schema("RayCluster")) == []
    assert any("'rayStartParms' was unexpected" in e for e in schema_errors(doc, _crd_schema("RayCluster")))


def test_kubernetes_schema_catches_a_wrong_type():
    doc = copy.deepcopy(_docs("kuberay/raycluster.yaml")[0])
    doc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    assert any("maxReplicas" in e and "'eight' is not of type 'integer'" in e for e in kubernetes_errors(doc))


# --- KubeRay: token auth, ClusterIP only, NetworkPolicy ------------------------------------------------

# rayStartParams that every group must set so that the NetworkPolicy can list its ports: Ray picks the
# first four at random; the others have defaults (52365 from KubeRay, 10002-19999 from Ray), written out so
# that the policy is checked against the values in use.
WORKER_PORT_RANGE = ("min-worker-port", "max-worker-port")
PINNED = ("node-manager-port", "object-manager-port", "runtime-env-agent-port", "dashboard-agent-grpc-port",
          "dashboard-agent-listen-port", *WORKER_PORT_RANGE)
HEAD_DEFAULT_PORTS = {"port": 6379, "dashboard-port": 8265, "ray-client-server-port": 10001}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)


def _ray_clusters():
    """(RayCluster spec, labels KubeRay puts on all its pods) of every Ray cluster infra/kuberay makes."""
    for rel in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        for doc in _docs(rel):
            if doc["kind"] == "RayCluster":
                yield doc["spec"], {"ray.io/cluster": doc["metadata"]["name"]}
            else:  # a RayJob's cluster is named <rayjob>-<random>: no fixed ray.io/cluster label
                yield doc["spec"]["rayClusterSpec"], {}


def _ray_groups():
    """(is_head, group spec, pod labels) of every head and worker group."""
    for spec, cluster_labels in _ray_clusters():
        for is_head, group in [(True, spec["headGroupSpec"])] + [(False, g) for g in spec["workerGroupSpecs"]]:
            labels = {**group["template"].get("metadata", {}).get("labels", {}), **cluster_labels}
            yield is_head, group, labels


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used here"
    return selector["matchLabels"].items() <= labels.items()


def _ray_ports(group: dict, is_head: bool) -> list[tuple[int, int]]:
    """The port ranges on which a pod of this group accepts connections from the other Ray pods."""
    params = group["rayStartParams"]
    assert set(PINNED) <= set(params), f"pin {set(PINNED) - set(params)}: the NetworkPolicy lists fixed ports"
    ports = [(int(v), int(v)) for k, v in params.items() if k.endswith("port") and k not in WORKER_PORT_RANGE]
    ports.append((int(params["min-worker-port"]), int(params["max-worker-port"])))
    if is_head:
        ports += [(int(params.get(k, default)),) * 2 for k, default in HEAD_DEFAULT_PORTS.items()]
    return ports


def _admits(ports: list[dict], lo: int, hi: int) -> bool:
    return any(p["protocol"] == "TCP" and p["port"] <= lo and hi <= p.get("endPort", p["port"]) for p in ports)


def test_ray_clusters_use_token_auth_and_cluster_ip_only():
    ray_version = importlib.metadata.version("ray")
    for spec, _ in _ray_clusters():
        assert spec["rayVersion"] == ray_version  # token auth needs Ray >= 2.52; clients match the cluster
        assert spec.get("authOptions") == {"mode": "token", "secretName": "detflow-ray-token"}
        head = spec["headGroupSpec"]
        assert head.get("serviceType") == "ClusterIP" and not head.get("enableIngress")
        assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
        for group in [head, *spec["workerGroupSpecs"]]:
            for container in group["template"]["spec"]["containers"]:
                assert not any(e["name"].startswith("RAY_AUTH") for e in container.get("env", [])), \
                    "KubeRay sets RAY_AUTH_MODE/RAY_AUTH_TOKEN from authOptions"


def test_network_policy_admits_only_cluster_peers_submitters_and_operator():
    policies = _docs("kuberay/networkpolicy.yaml")
    jobs_api_and_client = [{"protocol": "TCP", "port": 8265}, {"protocol": "TCP", "port": 10001}]
    for is_head, group, labels in _ray_groups():
        needed = _ray_ports(group, is_head)
        selecting = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        assert len(selecting) == 1, f"{labels}: {len(selecting)} NetworkPolicies select these pods, not 1"
        policy = selecting[0]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        peer_rules = []
        for rule in policy["spec"]["ingress"]:
            assert rule.get("from") and rule.get("ports"), "a rule without from/ports admits every source/port"
            for peer in rule["from"]:
                assert "ipBlock" not in peer and "podSelector" in peer, peer
            if any(_selects(peer["podSelector"], labels) and "namespaceSelector" not in peer for peer in rule["from"]):
                peer_rules.append(rule)
            else:  # submitters and the operator: the Jobs API and the Ray Client server only
                for port in rule["ports"]:
                    assert _admits(jobs_api_and_client, port["port"], port.get("endPort", port["port"])), rule
        assert len(peer_rules) == 1, f"{labels}: expected one rule for the cluster's own pods"
        for lo, hi in needed:
            assert _admits(peer_rules[0]["ports"], lo, hi), f"{labels}: port(s) {lo}-{hi} not admitted between Ray pods"


def test_ray_pods_get_credentials_from_secret_references_only():
    for _, group, _ in _ray_groups():
        for container in group["template"]["spec"]["containers"]:
            refs = {e["secretRef"]["name"] for e in container["envFrom"]}
            assert refs == {"detflow-s3", "detflow-postgres", "detflow-mlflow"}
            for entry in container.get("env", []):
                assert not (SECRET_NAME.search(entry["name"]) and "value" in entry), entry
    runtime_env = yaml.safe_load(_docs("kuberay/rayjob.yaml")[0]["spec"]["runtimeEnvYAML"])
    assert not any(SECRET_NAME.search(name) for name in runtime_env["env_vars"])


def test_no_secret_value_in_any_infra_file():
    credentials_in_url = re.compile(r"[a-z+]+://[^/\s:@]+:[^/\s@]+@")  # scheme://user:password@host
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        text = path.read_text()
        assert not credentials_in_url.search(text), f"{path}: credentials in a URL"
        if path.suffix == ".yaml":
            assert not any(d.get("kind") == "Secret" for d in yaml.safe_load_all(text) if isinstance(d, dict)), path
    for name, svc in _docs("docker/compose.yaml")[0]["services"].items():
        for var, value in svc.get("environment", {}).items():
            if SECRET_NAME.search(var):
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*)?\}", value), f"{name}.{var}: use a ${{VARIABLE}} from .env"
    example = json.loads((INFRA / "docker" / "s3.json.example").read_text())
    assert {c[k] for i in example["identities"] for c in i["credentials"] for k in c} == {"REPLACE_ME"}


def test_kuberay_manifests():
    cluster, job = _docs("kuberay/raycluster.yaml")[0], _docs("kuberay/rayjob.yaml")[0]
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    for spec, _ in _ray_clusters():
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
        assert gpu_groups, "no GPU worker group"
    assert job["spec"]["entrypoint"].startswith("python -m detflow run ")


# --- Ray cluster launcher, Compose, Docker image ---------------------------------------------------------

def test_cluster_launcher_uses_token_auth_and_a_local_dashboard():
    cfg = _docs("ray/cluster-gpu.yaml")[0]
    assert cfg["head_node_type"] in cfg["available_node_types"]
    head, worker = cfg["head_start_ray_commands"][-1], cfg["worker_start_ray_commands"][-1]
    assert head.startswith("RAY_AUTH_MODE=token ray start --head") and "--dashboard-host=127.0.0.1" in head
    assert worker.startswith("RAY_AUTH_MODE=token ray start --address=")
    assert cfg["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}  # the same token on every node


def test_compose_services_are_local_and_healthchecked():
    compose = _docs("docker/compose.yaml")[0]
    assert set(compose["services"]) == {"postgres", "s3", "mlflow"}
    for name, svc in compose["services"].items():
        assert "healthcheck" in svc, name
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert set(compose["volumes"]) == {"pgdata", "s3data"}
    command = compose["services"]["mlflow"]["command"]
    assert "--backend-store-uri postgresql://mlflow@postgres" in command and "--artifacts-destination s3://" in command


def test_dockerfile_installs_like_setup_script():
    dockerfile = (INFRA / "docker" / "Dockerfile.gpu").read_text()
    setup = (INFRA.parent / "scripts" / "setup.sh").read_text()
    assert 'pip install -q -e ".[$EXTRAS]"' in setup and "pip install --no-cache-dir -e" in dockerfile
    assert "torchao==0.18.0" in dockerfile and "torchao==0.18.0" in setup
    assert "import torch, tensorrt" in dockerfile
