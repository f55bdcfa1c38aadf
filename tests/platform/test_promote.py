"""The benchmark step's promote rule: the safe condition language (ast, never eval), validation at
workflow load (one-line errors naming the field and value, exit 2), a rule that holds vs one that
does not on a benchmark table, and the lineage that sets the alias (and upstream version tags) on
a real embedded MLflow store."""
from __future__ import annotations

import textwrap

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from detflow.errors import ConfigError
from detflow.workflows.lint import load_workflow
from detflow.workflows.promote import COLUMNS, condition_names, evaluate, parse_condition

WF = """
kind: workflow
name: prom
defaults: {model: rtmdet_tiny, data: synth}
steps:
  - id: synth
    uses: synth
  - id: train
    uses: train
    needs: [synth]
  - id: ptq
    uses: ptq
    needs: [train]
    with: {checkpoint: train}
  - id: bench
    uses: benchmark
    needs: [train, ptq]
    with:
      artifacts: [train, ptq]
      backends: [torch, onnxruntime]
      promote: {alias: champion, when: "WHEN", artifact: ptq, backend: onnxruntime}
"""

ROWS = [
    {"artifact": "train", "backend": "torch", "precision": "fp32", "batch_size": 1, "status": "ok", "p50_ms": 40.0, "mAP50": 0.8},
    {"artifact": "ptq", "backend": "onnxruntime", "precision": "int8", "batch_size": 4, "status": "ok", "p50_ms": 60.0, "mAP50": 0.5},
    {"artifact": "ptq", "backend": "onnxruntime", "precision": "int8", "batch_size": 1, "status": "ok", "p50_ms": 12.5, "mAP50": 0.72},
]


def test_condition_language_accepts_comparisons_and_boolean_logic():
    row = {"mAP50": 0.72, "p50_ms": 12.5, "mAP": None}
    assert evaluate("mAP50 >= 0.70 and p50_ms <= 30", row)
    assert not evaluate("mAP50 >= 0.75 or p50_ms > 30", row)
    assert evaluate("not (p50_ms > 30) and 0.7 < mAP50 < 0.8", row)
    assert evaluate("p50_ms != -1", row)
    assert not evaluate("mAP >= 0", row)  # a missing / non-numeric cell never holds
    assert condition_names(parse_condition("mAP50 >= 0.7 and p50_ms <= 30 or mAP50 > 0.9")) == ["mAP50", "p50_ms"]


def test_condition_columns_are_the_benchmark_rows():
    from detflow.bench.matrix import COLUMNS as BENCH

    assert set(COLUMNS) - {"latency_p50_ms"} <= set(BENCH)


@pytest.mark.parametrize(("text", "why"), [
    ("__import__('os').system('x')", "expected comparisons"),
    ("mAP50 >= 0.7 and", "not a valid condition"),
    ("speed > 3", "unknown column 'speed'"),
    ("mAP50 in [1]", "only < <= > >= == !="),
    ("mAP50 >= p50_ms * 2", "column names and numbers only"),
    ("mAP50 >= 'x'", "column names and numbers only"),
    ("mAP50.real > 1", "column names and numbers only"),
    ("mAP50", "expected comparisons"),
    ("", "expected a condition"),
])
def test_bad_conditions_are_one_line_errors_naming_the_value(text, why):
    with pytest.raises(ValueError) as info:
        parse_condition(text)
    assert why in str(info.value) and repr(text) in str(info.value) and "\n" not in str(info.value)


def _write(tmp_path, when: str, **swap):
    text = textwrap.dedent(WF).lstrip().replace("WHEN", when)
    for old, new in swap.items():
        text = text.replace(old, new)
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    return path


def test_promote_validates_at_workflow_load(tmp_path, monkeypatch, capsys):
    wf = load_workflow(_write(tmp_path, "mAP50 >= 0.70 and p50_ms <= 30"))
    assert wf.step("bench").with_.promote.alias == "champion"
    with pytest.raises(ConfigError) as info:
        load_workflow(_write(tmp_path, "speed > 3"))
    (line,) = [e for e in info.value.errors if "speed" in e]
    assert "promote.when" in line and "'speed > 3'" in line and "\n" not in line
    with pytest.raises(ConfigError) as info:
        load_workflow(_write(tmp_path, "mAP50 > 0.1", **{"artifact: ptq": "artifact: nope"}))
    assert any("promote.artifact 'nope'" in e for e in info.value.errors)
    with pytest.raises(ConfigError) as info:
        load_workflow(_write(tmp_path, "mAP50 > 0.1", **{"alias: champion": "alias: candidate"}))
    assert any("promote.alias" in e and "candidate" in e for e in info.value.errors)

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    from detflow.cli import main

    assert main(["run", str(_write(tmp_path, "mAP50 >= 0.7 and eval('1')")), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "promote.when" in err and "eval('1')" in err


def test_rule_holds_on_one_table_and_not_on_another(capsys):
    from detflow.workflows.schema import PromoteRule
    from detflow.workflows.steps.benchmark import check_promote

    rule = PromoteRule(alias="champion", when="mAP50 >= 0.70 and p50_ms <= 30", artifact="ptq", backend="onnxruntime")
    held = check_promote(rule, ROWS)
    assert held["held"] and held["batch_size"] == 1 and held["values"] == {"mAP50": 0.72, "p50_ms": 12.5}
    assert "held on ptq/onnxruntime" in held["message"] and "alias 'champion'" in held["message"]
    strict = rule.model_copy(update={"when": "mAP50 >= 0.75 and p50_ms <= 30"})
    assert not check_promote(strict, ROWS)["held"]
    assert "did not hold" in check_promote(strict, ROWS)["message"]
    batch4 = rule.model_copy(update={"batch_size": 4})
    assert not check_promote(batch4, ROWS)["held"]
    failed = [dict(r, status="failed", p50_ms=None) if r["artifact"] == "ptq" else r for r in ROWS]
    assert not check_promote(rule, failed)["held"]
    assert not check_promote(rule.model_copy(update={"backend": "tensorrt"}), ROWS)["held"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    from detflow import tracking

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield MlflowClient(tracking.configure())
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("when", ["mAP50 >= 0.70 and p50_ms <= 30", "mAP50 >= 0.90"])
def test_lineage_tags_upstream_versions_and_promotes_only_when_the_rule_held(store, tmp_path, when):
    from detflow.workflows.lineage import Lineage
    from detflow.workflows.steps.benchmark import check_promote

    wf = load_workflow(_write(tmp_path, when))
    lin = Lineage(wf, "run-1")
    lin.start_workflow()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name, text in (("model.pt", "w"), ("config.yaml", "{}"), ("meta.json", "{}")):
        (ckpt / name).write_text(text)
    quant = tmp_path / "ptq"
    quant.mkdir()
    (quant / "model.int8.onnx").write_bytes(b"onnx")
    (quant / "model.int8.json").write_text('{"class_names": ["a"]}')
    outputs = {"train": {"checkpoint": str(ckpt), "metrics": {}}, "ptq": {"onnx": str(quant / "model.int8.onnx")}}
    for sid in ("train", "ptq"):
        step = wf.step(sid)
        lin.step_succeeded(step, lin.start_step(step, f"key-{sid}"), outputs[sid], {})
    step = wf.step("bench")
    result = check_promote(step.with_.promote, ROWS)
    lin.step_succeeded(step, lin.start_step(step, "key-bench"), {"rows": ROWS, "metrics": {}, "promote": result}, {})

    name = wf.model_name
    int8 = store.get_model_version(name, "2")
    assert int8.tags["detflow.source_step"] == "ptq"
    assert int8.tags["detflow.upstream_version"] == f"{name}/1" and int8.tags["detflow.checkpoint_version"] == f"{name}/1"
    assert str(store.get_model_version_by_alias(name, "candidate").version) == "2"
    files = {f.path for f in store.list_logged_model_artifacts(int8.source.removeprefix("models:/"))}
    assert {"model.int8.onnx", "model.int8.json", "MLmodel"} <= files
    bench = store.search_runs([store.get_experiment_by_name("prom").experiment_id],
                              "tags.`detflow.step_id` = 'bench'")[0]
    aliases = store.get_registered_model(name).aliases
    if result["held"]:
        assert str(aliases["champion"]) == "2" and bench.data.tags["detflow.promoted"] == f"{name}/2@champion"
    else:
        assert "champion" not in aliases and bench.data.tags["detflow.promote.held"] == "false"
