"""Repository layout and import direction: detmodels stays torch-only; source roots are not packages."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"ray", "mlflow", "optuna", "detflow", "boto3", "sqlalchemy", "typer", "pydantic"}


def test_source_roots_are_not_packages():
    for root in ("models", "platform"):
        assert not (ROOT / root / "__init__.py").exists(), f"{root}/__init__.py would shadow a package"


def test_top_level_layout():
    for name in ("pyproject.toml", "platform", "models", "workflows", "infra", "tests", "docs", "README.md"):
        assert (ROOT / name).exists(), name


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted((ROOT / "models" / "detmodels").rglob("*.py")), ids=lambda p: p.name)
def test_detmodels_imports_no_platform(path):
    bad = _imported_roots(path) & FORBIDDEN
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_importing_detmodels_loads_no_platform_module():
    code = (
        "import sys, detmodels; detmodels.list_models(); "
        f"bad = [m for m in {sorted(FORBIDDEN)!r} if m in sys.modules]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_stdlib_platform_not_shadowed():
    code = "import platform; platform.system(); import detflow, detmodels"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_import_linter_contract():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.fail("import-linter is not installed: install the dev extra (scripts/setup.sh does)")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
