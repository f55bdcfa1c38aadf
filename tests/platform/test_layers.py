"""The platform's architecture rules, checked on the code: import-linter contracts (layers, MLflow
behind detflow.tracking, detmodels' public names only, no sibling cycles), no two files importing
each other, one redaction implementation."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PLATFORM = ROOT / "platform" / "detflow"


def _contracts() -> dict[str, dict]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["name"]: c for c in data["tool"]["importlinter"]["contracts"]}


def test_contracts_declare_the_platform_layers_and_seams():
    contracts = _contracts()
    layers = next(c for c in contracts.values() if c["type"] == "layers")
    assert layers["containers"] == ["detflow"]
    order = [layer.split(" | ") for layer in layers["layers"]]
    flat = [name for layer in order for name in layer]
    # upper layers first: the CLI on top, tracking/config below train, the storage leaf at the bottom
    assert flat.index("cli") < flat.index("sdk") < flat.index("workflows") < flat.index("tune") < flat.index("train")
    assert flat.index("train") < flat.index("engine") < flat.index("data") < flat.index("tracking")
    assert not any(c.get("ignore_imports") for c in contracts.values()), "a contract carries exceptions"
    mlflow = [c for c in contracts.values() if c["type"] == "forbidden" and c["forbidden_modules"] == ["mlflow"]]
    assert mlflow and "detflow.tracking" not in mlflow[0]["source_modules"]
    public = [c for c in contracts.values() if c["type"] == "forbidden" and "detmodels.families" in c["forbidden_modules"]]
    assert public and public[0]["source_modules"] == ["detflow"]
    assert any(c["type"] == "acyclic_siblings" and c["ancestors"] == ["detflow"] for c in contracts.values())


def test_lint_imports_keeps_every_contract():
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), "import-linter is not installed: install the dev extra (scripts/setup.sh does)"
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert f"{len(_contracts())} kept, 0 broken" in out, out[-2000:]


@pytest.mark.parametrize("package", ["detflow", "detmodels"])
def test_no_two_files_import_each_other(package):
    graph = grimp.build_graph(package)
    pairs = sorted({tuple(sorted((a, b))) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                    if a in graph.find_modules_directly_imported_by(b)})
    assert not pairs, f"modules importing each other: {pairs}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_only_the_tracking_package_imports_mlflow():
    offenders = [str(p.relative_to(ROOT)) for p in PLATFORM.rglob("*.py")
                 if "tracking" not in p.relative_to(PLATFORM).parts
                 and any(m == "mlflow" or m.startswith("mlflow.") for m in _imports(p))]
    assert not offenders, f"mlflow imported outside detflow.tracking: {offenders}"


def test_one_redact_implementation():
    defined = {}
    for path in PLATFORM.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in ("redact", "redacted", "redact_url", "redact_text"):
                defined.setdefault(node.name, []).append(str(path.relative_to(PLATFORM)))
    assert defined == {"redact": ["redact.py"], "redact_url": ["redact.py"], "redact_text": ["redact.py"]}, defined


def test_redact_module_is_a_leaf():
    assert {m for m in _imports(PLATFORM / "redact.py")} <= {"__future__", "os", "re", "typing"}
