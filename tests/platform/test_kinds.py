"""Config kinds (`kind: train | workflow | sweep | nas` on every user file), `detflow config migrate`,
the step-kind table, the one SDK module and plain (never silently skipped) imports."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from detflow.cli import main
from detflow.config.kinds import add_kind_line, check_kind, looks_like
from detflow.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PLATFORM = REPO / "platform" / "detflow"
EXAMPLES = sorted(p for p in (REPO / "workflows").rglob("*.yaml"))

TRAIN = """\
# a train config
name: unit
model: {name: rtmdet_tiny}
data:
  train: {annotations: train.json, images: images}
  image_size: 64
train: {epochs: 1, batch_size: 2}
"""
WORKFLOW = """\
name: wf
steps:
  - {id: synth, uses: synth, with: {num_images: 4, image_size: 64}}
"""
SWEEP = """\
name: sw
base: train.yaml
space: {train.optimizer.lr: {uniform: [0.001, 0.01]}}
"""
NAS = """\
name: n
base: train.yaml
proxy: {epochs: 1}
"""


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    return tmp_path


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _with_kind(text: str, kind: str) -> str:
    return f"kind: {kind}\n{text}"


# ------------------------------------------------------------------------------ missing / wrong kind
@pytest.mark.parametrize("kind, text, why", [
    ("train", TRAIN, "top-level model and data"), ("workflow", WORKFLOW, "top-level steps"),
    ("sweep", SWEEP, "top-level base and space"), ("nas", NAS, "top-level base and proxy")])
def test_missing_kind_names_the_file_the_kind_it_looks_like_and_migrate(in_tmp, capsys, kind, text, why):
    (in_tmp / "cfg.yaml").write_text(text)
    code, out, err = _cli(capsys, "config", "validate", "cfg.yaml")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"cfg.yaml: (top level): missing 'kind'; this looks like a {kind} config ({why}): add 'kind: {kind}' "
        "as the first line, or run 'detflow config migrate cfg.yaml'"]


def test_missing_kind_of_an_unrecognisable_file_lists_the_kinds(in_tmp, capsys):
    (in_tmp / "odd.yaml").write_text("foo: 1\n")
    code, _, err = _cli(capsys, "config", "validate", "odd.yaml")
    assert code == 2 and len(err.splitlines()) == 1
    assert "odd.yaml: (top level): missing 'kind'; add 'kind: train | workflow | sweep | nas'" in err


def test_unknown_kind_value(in_tmp, capsys):
    (in_tmp / "cfg.yaml").write_text(_with_kind(TRAIN, "training"))
    code, _, err = _cli(capsys, "config", "validate", "cfg.yaml")
    assert code == 2 and err.strip() == "cfg.yaml: kind: expected one of train | workflow | sweep | nas, got 'training'"


def test_train_command_refuses_a_workflow_file(in_tmp, capsys):
    (in_tmp / "wf.yaml").write_text(_with_kind(WORKFLOW, "workflow"))
    code, _, err = _cli(capsys, "train", "wf.yaml")
    assert code == 2 and len(err.splitlines()) == 1
    assert "wf.yaml: kind: this is a workflow config, but a train config is expected here" in err
    assert "run it with 'detflow run wf.yaml'" in err


def test_run_command_refuses_a_train_file_and_one_without_kind(in_tmp, capsys):
    (in_tmp / "t.yaml").write_text(_with_kind(TRAIN, "train"))
    code, _, err = _cli(capsys, "run", "t.yaml", "--dry-run")
    assert code == 2 and "t.yaml: kind: this is a train config, but a workflow config is expected here" in err
    (in_tmp / "wf.yaml").write_text(WORKFLOW)
    code, _, err = _cli(capsys, "run", "wf.yaml", "--dry-run")
    assert code == 2 and "missing 'kind'; this looks like a workflow config" in err


def test_validate_kind_option_requires_that_kind(in_tmp, capsys):
    (in_tmp / "wf.yaml").write_text(_with_kind(WORKFLOW, "workflow"))
    assert _cli(capsys, "config", "validate", "wf.yaml", "--kind", "workflow")[0] == 0
    code, _, err = _cli(capsys, "config", "validate", "wf.yaml", "--kind", "train")
    assert code == 2 and "this is a workflow config, but a train config is expected" in err


def test_references_inside_sweeps_and_workflows_are_user_files(in_tmp, capsys):
    """`base:` of a sweep and `config:` of a workflow step must carry `kind: train` too."""
    (in_tmp / "train.yaml").write_text(TRAIN)  # no kind
    (in_tmp / "sw.yaml").write_text(_with_kind(SWEEP, "sweep"))
    code, _, err = _cli(capsys, "config", "validate", "sw.yaml")
    assert code == 2 and "train.yaml: (top level): missing 'kind'; this looks like a train config" in err
    (in_tmp / "wf.yaml").write_text(_with_kind(WORKFLOW, "workflow") + "  - {id: t, uses: train, needs: [synth], "
                                    "with: {config: train.yaml, data: synth}}\n")
    code, _, err = _cli(capsys, "config", "validate", "wf.yaml")
    assert code == 2 and "train.yaml: (top level): missing 'kind'" in err
    (in_tmp / "train.yaml").write_text(_with_kind(TRAIN, "train"))
    assert _cli(capsys, "config", "validate", "wf.yaml")[0] == 0


def test_internal_configs_need_no_kind_and_carry_it_when_dumped():
    """Configs detflow composes itself (and config.yaml files of old checkpoints) validate without it."""
    from detflow.config.compose import parse_config
    from detflow.config.train import TrainConfig

    cfg = parse_config(TrainConfig, yaml.safe_load(TRAIN), "<internal>")
    assert cfg.kind == "train" and cfg.model_dump()["kind"] == "train"
    with pytest.raises(ConfigError, match="kind"):
        parse_config(TrainConfig, {**yaml.safe_load(TRAIN), "kind": "sweep"}, "<internal>")


def test_check_kind_and_looks_like_units():
    assert check_kind({"kind": "nas"}, ("sweep", "nas"), "f.yaml") == {"kind": "nas"}
    assert looks_like({"steps": []}) == ("workflow", "top-level steps") and looks_like([1]) is None
    with pytest.raises(ConfigError, match=r"^f.yaml: kind: this is a nas config"):
        check_kind({"kind": "nas"}, "train", "f.yaml")


# ------------------------------------------------------------------------------------------ migrate
def test_migrate_inserts_one_line_after_the_comments_keeping_every_byte(in_tmp, capsys):
    original = "# header\r\n#   more\r\n\r\nname: unit  # trailing comment\r\nmodel: {name: rtmdet_tiny}\r\n" \
               "data:\r\n  train: {annotations: a.json, images: i}\r\n"
    path = in_tmp / "old.yaml"
    path.write_bytes(original.encode())
    path.chmod(0o640)
    code, out, _ = _cli(capsys, "config", "migrate", "old.yaml")
    assert code == 0 and "old.yaml: added 'kind: train'" in out
    migrated = path.read_bytes().decode()
    assert migrated == "# header\r\n#   more\r\nkind: train\r\n\r\nname: unit  # trailing comment\r\nmodel: " \
                       "{name: rtmdet_tiny}\r\ndata:\r\n  train: {annotations: a.json, images: i}\r\n"
    assert migrated.replace("kind: train\r\n", "", 1) == original
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    assert not [p for p in in_tmp.iterdir() if p.name != "old.yaml"]  # no temp file left behind
    assert _cli(capsys, "config", "migrate", "old.yaml")[:2] == (0, "old.yaml: ok (has kind)\n")  # idempotent
    assert path.read_bytes().decode() == migrated


def test_migrate_check_exits_1_and_changes_nothing(in_tmp, capsys):
    (in_tmp / "wf.yaml").write_text(WORKFLOW)
    (in_tmp / "sw.yaml").write_text(_with_kind(SWEEP, "sweep"))
    code, out, _ = _cli(capsys, "config", "migrate", "--check", "wf.yaml", "sw.yaml")
    assert code == 1 and "wf.yaml: needs migration" in out and "sw.yaml: ok" in out
    assert (in_tmp / "wf.yaml").read_text() == WORKFLOW
    assert _cli(capsys, "config", "migrate", "wf.yaml")[0] == 0
    assert (in_tmp / "wf.yaml").read_text() == "kind: workflow\n" + WORKFLOW
    assert _cli(capsys, "config", "migrate", "--check", "wf.yaml", "sw.yaml")[0] == 0


def test_migrate_an_unrecognisable_file_needs_kind_option(in_tmp, capsys):
    (in_tmp / "odd.yaml").write_text("# odd\nfoo: 1\n")
    code, _, err = _cli(capsys, "config", "migrate", "odd.yaml")
    assert code == 2 and "odd.yaml: (top level): cannot tell its kind; give it with --kind" in err
    assert _cli(capsys, "config", "migrate", "odd.yaml", "--kind", "nas")[0] == 0
    assert (in_tmp / "odd.yaml").read_text() == "# odd\nkind: nas\nfoo: 1\n"


def test_add_kind_line_cases():
    assert add_kind_line("name: x\n", "train") == "kind: train\nname: x\n"
    assert add_kind_line("%YAML 1.2\n---\nname: x", "train") == "%YAML 1.2\n---\nkind: train\nname: x"
    assert add_kind_line("kind: train\nname: x\n", "train") is None
    assert add_kind_line("", "nas") == "kind: nas\n"


def test_example_files_need_no_migration(capsys):
    code, out, _ = _cli(capsys, "config", "migrate", "--check", *map(str, EXAMPLES))
    assert code == 0 and out.count("ok (has kind)") == len(EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO / "workflows")))
def test_every_example_yaml_validates(path, capsys):
    code, out, err = _cli(capsys, "config", "validate", str(path))
    assert (code, out) == (0, "ok\n"), err
    assert yaml.safe_load(path.read_text())["kind"] in ("train", "workflow", "sweep", "nas")


# ------------------------------------------------------------------------------- tables, no strings
def test_config_kind_table_maps_each_kind_to_its_class():
    from detflow.config.train import TrainConfig
    from detflow.sdk import CONFIG_KINDS
    from detflow.workflows.schema import Workflow

    assert list(CONFIG_KINDS) == ["train", "workflow", "sweep", "nas"]
    assert CONFIG_KINDS["train"].cls is TrainConfig and CONFIG_KINDS["workflow"].cls is Workflow
    for name, kind in CONFIG_KINDS.items():
        assert kind.cls.model_fields["kind"].default == name and callable(kind.load)


def test_step_kinds_are_one_table_of_functions_and_kinds_does_not_import_the_schema():
    from detflow.workflows import builtin
    from detflow.workflows.kinds import StepKind, step_kinds

    names = [k.name for k in builtin.BUILTIN_KINDS]
    assert set(names) <= set(step_kinds()) and len(names) == len(set(names)) == 10
    assert all(callable(k.run) and k.run.__module__.startswith("detflow.workflows.steps.") for k in builtin.BUILTIN_KINDS)
    with pytest.raises(TypeError, match="run must be a function"):
        StepKind("x", builtin.BUILTIN_KINDS[0].params, "detflow.workflows.steps.synth:run")
    tree = ast.parse((PLATFORM / "workflows" / "kinds.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m and ("schema" in m or "steps" in m) for m in imported), imported


def test_no_module_function_strings_or_silent_import_guards():
    for rel in ("workflows/schema.py", "workflows/kinds.py", "workflows/builtin.py", "config/kinds.py", "cli/__init__.py"):
        text = (PLATFORM / rel).read_text()
        assert "importlib" not in text and ':run"' not in text and "area not built" not in text, rel


# ------------------------------------------------------------------------------------ one SDK module
SDK_NAMES = ("run", "submit", "status", "resume", "cancel", "sweep", "nas", "compare", "logs", "plan", "list_runs",
             "validate")


def test_one_sdk_module_is_what_detflow_exports():
    import detflow
    import detflow.sdk as sdk

    for name in SDK_NAMES:
        fn = getattr(sdk, name)
        assert callable(fn) and fn.__module__ == "detflow.sdk", name
        assert getattr(detflow, name) is fn, name
    assert set(SDK_NAMES) <= set(detflow.__all__) and set(SDK_NAMES) <= set(dir(detflow))
    assert not (PLATFORM / "tune" / "sdk.py").exists()


def test_detflow_nas_stays_the_function_after_importing_the_search_package():
    """The NAS subpackage is ``detflow.archsearch``: importing it never rebinds ``detflow.nas``."""
    assert not (PLATFORM / "nas").exists() and (PLATFORM / "archsearch" / "__init__.py").is_file()
    code = textwrap.dedent("""
        import importlib, inspect, detflow
        fn = detflow.nas
        importlib.import_module("detflow.archsearch")
        importlib.import_module("detflow.archsearch.runner")
        import detflow.archsearch.config
        from detflow import sdk
        assert detflow.nas is sdk.nas is fn and inspect.isfunction(fn), detflow.nas
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "DETFLOW_HOME": "/tmp/detflow-kinds-test"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# ----------------------------------------------------------------------------- no silent import skips
_BREAK = """
import sys
class Broken:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise ImportError("simulated broken import of " + name)
sys.meta_path.insert(0, Broken())
sys.argv = ["detflow", *{args!r}]
from detflow.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("module, args", [
    ("detflow.cli.bench", ["--help"]),                      # a CLI group
    ("detflow.tune.runner", ["config", "validate", "x.yaml"]),  # a config kind's provider
])
def test_a_broken_import_is_an_error_not_a_skipped_area(tmp_path, module, args):
    (tmp_path / "x.yaml").write_text(_with_kind(TRAIN, "train"))
    r = subprocess.run([sys.executable, "-c", _BREAK.format(module=module, args=args)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300, env={**os.environ, "DETFLOW_HOME": str(tmp_path)})
    assert r.returncode != 0 and f"simulated broken import of {module}" in r.stderr, (r.returncode, r.stderr[-2000:])


def test_the_cli_imports_no_torch_ray_or_mlflow():
    """`detflow --help` stays cheap: every command module imports its heavy dependencies (and the
    SDK, the configs) inside the command, and `import detflow` loads the SDK on first use."""
    code = ("import sys, detflow, detflow.cli; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])
