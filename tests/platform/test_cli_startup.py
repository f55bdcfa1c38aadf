"""CLI start-up stays cheap: importing the CLI, every command's --help and `detflow models list`
import none of torch, Ray, MLflow or detmodels, and `detflow config validate` imports no torch
(checked in fresh interpreters through ``sys.modules``; the timings themselves are printed by
`detflow bench cli`, never asserted here)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("torch", "ray", "mlflow", "detmodels")

# Runs its argv lists through detflow.cli.main in one interpreter, then prints the heavy modules loaded.
SCRIPT = textwrap.dedent('''
    import contextlib, io, json, sys
    from detflow.cli import main
    codes, out = [], io.StringIO()
    for argv in json.loads(sys.argv[1]):
        with contextlib.redirect_stdout(out):
            codes.append(main(argv))
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in %r)
    print(json.dumps({"codes": codes, "heavy": heavy, "out": out.getvalue()}))
''' % (HEAVY,))


# Runs one argv through detflow.cli.main; prints its code, stderr and the torch/Ray/MLflow modules loaded.
VALIDATE_SCRIPT = textwrap.dedent('''
    import contextlib, io, json, sys
    from detflow.cli import main
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(json.loads(sys.argv[1]))
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "ray", "mlflow"))
    print(json.dumps({"code": code, "heavy": heavy, "err": err.getvalue()}))
''')
REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "workflows" / "configs").glob("*.yaml"))


def _run(argvs: list[list[str]]) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(argvs)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _all_command_paths() -> list[list[str]]:
    import typer

    from detflow.cli import app

    def walk(cmd, prefix):
        yield prefix
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, prefix + [name])

    return list(walk(typer.main.get_command(app), []))


def test_importing_the_cli_imports_nothing_heavy():
    assert _run([]) == {"codes": [], "heavy": [], "out": ""}


def test_every_commands_help_imports_nothing_heavy():
    paths = _all_command_paths()
    assert len(paths) > 20 and ["models", "list"] in paths and ["bench", "cli"] in paths
    result = _run([[*p, "--help"] for p in paths])
    assert result["codes"] == [0] * len(paths)
    assert result["heavy"] == []


def test_models_list_reads_the_zoo_table_without_torch():
    from detflow.zoo import zoo_entries

    result = _run([["models", "list", "--json"], ["models", "list", "--family", "yolov6", "--json", "--no-flops"]])
    assert result["codes"] == [0, 0] and result["heavy"] == []
    everything, yolov6 = (json.loads(line) for line in result["out"].splitlines())
    assert [(r["name"], r["params_m"], r["gflops"]) for r in everything] == [
        (e.name, e.params_m, e.gflops) for e in zoo_entries()]
    assert {r["family"] for r in yolov6} == {"yolov6"} and all("gflops" not in r for r in yolov6)
    assert not any(r["deploy"] for r in everything)


def test_models_list_unknown_name_is_exit_2():
    result = _run([["models", "list", "rtmdet_huge"]])
    assert result["codes"] == [2]


def test_bench_cli_reports_every_case_without_asserting_times():
    from detflow.bench.cli_bench import cli_cases, run_cli_bench

    assert [c.argv for c in cli_cases(workflow="wf.yaml", lineage=False)][-1] == ("run", "wf.yaml", "--no-lineage")
    result = run_cli_bench(runs=2, config=None, workflow=None)
    assert list(result.times) == ["detflow --help", "detflow models list"]
    assert all(len(t) == 2 and min(t) > 0 for t in result.times.values())
    table = result.to_markdown().splitlines()
    assert table[-1].startswith("| `detflow models list` |") and table[-1].endswith("| < 3 |")
    assert [c["command"] for c in result.to_dict()["cases"]] == list(result.times)


def _validate(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", VALIDATE_SCRIPT, json.dumps(["config", "validate", str(path)])],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_family_has_a_config():
    assert len(CONFIGS) >= 5 and (REPO / "workflows" / "configs" / "rtmdet_tiny_synth.yaml") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validate_imports_no_torch(path):
    """Typing a config reads the model catalog and options without torch (nor Ray, MLflow)."""
    assert _validate(path) == {"code": 0, "heavy": [], "err": ""}


def test_config_validate_bad_model_option_is_one_line_exit_2_without_torch(tmp_path):
    source = (REPO / "workflows" / "configs" / "yolov6_n_synth.yaml").read_text()
    assert "model: {name: yolov6_n}" in source
    bad = tmp_path / "bad.yaml"
    bad.write_text(source.replace("model: {name: yolov6_n}", "model: {name: yolov6_n, assigner: {tal_topk: 0}}"))
    result = _validate(bad)
    assert result["code"] == 2 and result["heavy"] == []
    assert result["err"].splitlines() == [f"{bad}: model.assigner.tal_topk: expected an integer >= 1, got 0"]
