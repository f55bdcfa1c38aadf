"""Workflow validation: one test per lint rule (error names the line, the step and the fix), typed
``with`` per kind, ``--set`` overrides, path resolution, the shipped example workflows, dry-run plan."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from detflow.errors import ConfigError
from detflow.workflows.lint import lint, load_workflow
from detflow.workflows.schema import DistillParams, QATParams

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "workflows").glob("*.yaml"))


def _write(tmp_path: Path, text: str) -> Path:
    """A workflow file; ``kind: workflow`` is appended (a user file needs it) so line numbers stay."""
    path = tmp_path / "wf.yaml"
    text = textwrap.dedent(text).lstrip()
    path.write_text(text if "kind:" in text else text.rstrip("\n") + "\nkind: workflow\n")
    return path


def _errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_workflow(_write(tmp_path, text))
    return info.value.errors


GOOD = """
name: ok
defaults: {model: rtmdet_tiny, data: synth}
steps:
  - id: synth
    uses: synth
  - id: train
    uses: train
    needs: [synth]
  - id: distill
    uses: distill
    needs: [train]
    with: {teacher: train}
  - id: qat
    uses: qat
    needs: [distill]
    with: {checkpoint: distill}
  - id: bench
    uses: benchmark
    needs: [train, qat]
    with: {artifacts: [train, qat]}
"""


def test_valid_workflow_has_typed_params(tmp_path):
    wf = load_workflow(_write(tmp_path, GOOD))
    assert [s.id for s in wf.steps] == ["synth", "train", "distill", "qat", "bench"]
    assert isinstance(wf.step("distill").with_, DistillParams) and wf.step("distill").with_.teacher == "train"
    assert isinstance(wf.step("qat").with_, QATParams) and wf.step("qat").with_.epochs == 2
    assert wf.step("train").ray_resources() == {"num_cpus": 0.0}  # Ray Train workers reserve their own


def test_unknown_kind_names_line_and_suggests(tmp_path):
    errors = _errors(tmp_path, GOOD.replace("uses: train\n", "uses: trian\n"))
    assert any(e.startswith(f"{tmp_path / 'wf.yaml'}:7: step 'train': unknown step kind 'trian' (did you mean 'train'?)")
               for e in errors), errors


def test_unknown_with_key_and_step_key(tmp_path):
    errors = _errors(tmp_path, GOOD.replace("with: {teacher: train}", "with: {teacher: train, wieght: 2}")
                     .replace("  - id: qat\n", "  - id: qat\n    retry: 2\n"))
    assert any(":12: step 'distill': unknown `with` key 'wieght' for kind 'distill' (did you mean 'weight'?)" in e
               for e in errors), errors
    assert any("step 'qat': unknown key 'retry' (did you mean 'retries'?)" in e for e in errors), errors


def test_needs_missing_step(tmp_path):
    errors = _errors(tmp_path, GOOD.replace("needs: [distill]", "needs: [distil]"))
    assert any(":15: step 'qat': needs 'distil', which is not a step (did you mean 'distill'?)" in e for e in errors), errors


def test_cycle_is_reported_with_its_path(tmp_path):
    errors = _errors(tmp_path, GOOD.replace("    uses: train\n    needs: [synth]", "    uses: train\n    needs: [synth, distill]"))
    cycle = [e for e in errors if "cycle in needs" in e]
    assert len(cycle) == 1 and ("train -> distill -> train" in cycle[0] or "distill -> train -> distill" in cycle[0])
    assert "fix: remove" in cycle[0]


def test_reference_to_step_not_upstream(tmp_path):
    errors = _errors(tmp_path, GOOD.replace("needs: [train, qat]", "needs: [qat]\n    with: {artifacts: [train, qat, nope]}")
                     .replace("    with: {artifacts: [train, qat]}\n", ""))
    # train *is* upstream of bench through qat → distill → train; 'nope' is not a step at all
    assert not any("`artifacts: train`" in e for e in errors), errors
    assert any("`artifacts: nope` names no step" in e for e in errors), errors
    errors = _errors(tmp_path, GOOD.replace("needs: [distill]\n    with: {checkpoint: distill}",
                                            "needs: [train]\n    with: {checkpoint: distill}"))
    hit = [e for e in errors if "`checkpoint: distill` names a step that is not upstream" in e]
    assert hit and hit[0].split(":")[1] == "16" and "fix: add 'distill' to the needs of 'qat'" in hit[0]


def test_reference_to_step_of_wrong_kind(tmp_path):
    errors = _errors(tmp_path, GOOD.replace("with: {checkpoint: distill}", "with: {checkpoint: synth}")
                     .replace("needs: [distill]", "needs: [distill, synth]"))
    assert any("`checkpoint: synth` needs a checkpoint, but a 'synth' step produces dataset" in e for e in errors), errors


def test_defaults_data_reference_must_be_upstream(tmp_path):
    errors = _errors(tmp_path, GOOD.replace("    uses: train\n    needs: [synth]", "    uses: train"))
    assert any("step 'train': `defaults.data: synth` names a step that is not upstream" in e for e in errors), errors


def test_missing_required_inputs(tmp_path):
    errors = _errors(tmp_path, GOOD.replace("defaults: {model: rtmdet_tiny, data: synth}", "")
                     .replace("with: {teacher: train}", "with: {}"))
    assert any("step 'train': a 'train' step needs a dataset" in e for e in errors), errors
    assert any("step 'train': a 'train' step needs a model" in e and "fix: set `with: {model: NAME}`" in e for e in errors)
    assert any("step 'distill': with.teacher: missing required value" in e for e in errors), errors


def test_wrong_value_type_names_field(tmp_path):
    errors = _errors(tmp_path, GOOD.replace("with: {checkpoint: distill}", "with: {checkpoint: distill, epochs: zero}"))
    assert any("step 'qat': with.epochs: expected an integer, got 'zero'" in e for e in errors), errors


def test_top_level_and_duplicate_ids(tmp_path):
    errors = _errors(tmp_path, "nam: x\nsteps: []\n")
    assert any("unknown top-level key 'nam' (did you mean 'name'?)" in e for e in errors)
    assert any("`steps` must be a non-empty list" in e for e in errors)
    errors = _errors(tmp_path, GOOD.replace("id: qat", "id: train"))
    assert any("step 'train': duplicate step id" in e for e in errors), errors


def test_defaults_are_validated(tmp_path):
    errors = _errors(tmp_path, GOOD.replace("defaults: {model: rtmdet_tiny, data: synth}",
                                            "defaults: {model: rtmdet_tiny, data: synth, scaling: {workers: 0}}"))
    assert any("defaults.scaling.workers: expected a number >= 1" in e or "defaults.scaling.workers" in e for e in errors), errors


def test_set_overrides_address_steps_by_id(tmp_path):
    wf = load_workflow(_write(tmp_path, GOOD), ["steps.qat.with.epochs=5", "defaults.image_size=256"])
    assert wf.step("qat").with_.epochs == 5 and wf.defaults.image_size == 256
    with pytest.raises(ConfigError, match="no step 'nope'"):
        load_workflow(_write(tmp_path, GOOD), ["steps.nope.with.epochs=5"])


def test_relative_paths_resolve_against_the_file(tmp_path):
    text = GOOD.replace("defaults: {model: rtmdet_tiny, data: synth}",
                        "defaults: {model: rtmdet_tiny, data: {train: {annotations: d/train.json, images: d/img}}}")
    wf = load_workflow(_write(tmp_path, text))
    assert wf.defaults.data.train.annotations == str(tmp_path / "d" / "train.json")


def test_lint_returns_sorted_errors_for_raw_mappings():
    assert lint({"name": "x", "steps": [{"id": "a", "uses": "synth"}]}) == []
    errors = lint({"name": "x", "steps": [{"id": "a", "uses": "export"}]})
    assert [e.message for e in errors] == ["with.checkpoint: missing required value"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_workflows_validate(path):
    wf = load_workflow(path)
    assert wf.steps and all(s.uses for s in wf.steps)


def test_quickstart_chain():
    wf = load_workflow(REPO / "workflows" / "quickstart.yaml")
    assert [s.uses for s in wf.steps] == ["synth", "train", "distill", "qat", "benchmark"]
    bench = wf.step("bench").with_
    assert set(bench.backends) == {"torch", "onnxruntime"} and bench.batch_sizes == [1, 8]
    assert wf.defaults.scaling.workers == 2 and wf.defaults.model == "rtmdet_tiny"


def test_workflow_is_a_config_kind():
    from detflow.sdk import validate

    kind, cfg = validate(REPO / "workflows" / "quickstart.yaml")
    assert kind == "workflow" and cfg.name == "quickstart" and cfg.kind == "workflow"


def test_dry_run_prints_dag_with_cache_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    from detflow.cli import main

    assert main(["run", str(_write(tmp_path, GOOD)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for sid in ("synth", "train", "distill", "qat", "bench"):
        assert sid in out
    assert "miss" in out and "hit" not in out
    assert main(["run", str(_write(tmp_path, GOOD.replace("trian", ""))), "--dry-run", "--set", "steps.qat.with.epochs=x"]) == 2


def test_cache_keys_follow_params_upstream_and_file_content(tmp_path):
    from detflow.workflows.cache import step_keys
    from detflow.workflows.lint import parse_workflow

    ann = tmp_path / "train.json"
    ann.write_text('{"images": []}')
    (tmp_path / "img").mkdir()

    def wf(epochs: int, extra: dict | None = None):
        return parse_workflow({
            "name": "k", "defaults": {"model": "rtmdet_tiny",
                                      "data": {"train": {"annotations": str(ann), "images": str(tmp_path / "img")}}},
            "steps": [{"id": "train", "uses": "train", "with": {"train": {"epochs": epochs}}},
                      {"id": "export", "uses": "export", "needs": ["train"], "with": {"checkpoint": "train"}},
                      {"id": "other", "uses": "synth", **(extra or {})}]})

    k1, k2 = step_keys(wf(3)), step_keys(wf(3))
    assert k1 == k2 and len(set(k1.values())) == 3
    k3 = step_keys(wf(4))
    assert k3["train"] != k1["train"] and k3["export"] != k1["export"] and k3["other"] == k1["other"]
    ann.write_text('{"images": [], "x": 1}')  # same path, new content
    assert step_keys(wf(3))["train"] != k1["train"]


def test_artifact_paths_only_top_level_artifact_keys(tmp_path):
    from detflow.workflows.cache import artifact_paths, outputs_exist

    f = tmp_path / "a.onnx"
    f.write_text("x")
    outputs = {"onnx": str(f), "protocol": {"versions": {"onnx": "1.17"}}, "rows": [{"path": "nope"}],
               "dataset": {"train_json": str(f), "images_dir": str(tmp_path)}, "metrics": {"onnx": 1.0}}
    assert sorted(artifact_paths(outputs)) == sorted([str(f), str(f), str(tmp_path)])
    assert outputs_exist(outputs)
    f.unlink()
    assert not outputs_exist(outputs)


def test_cache_keys_follow_files_inside_a_base_config_and_nested_images(tmp_path):
    """A file named only inside the step's ``config:`` base (relative to it), and an image deep in
    the images folder, are part of the key; so is the code identity."""
    from detflow.workflows.cache import code_identity, step_keys
    from detflow.workflows.lint import parse_workflow

    (tmp_path / "data" / "images" / "nested").mkdir(parents=True)
    (tmp_path / "data" / "train.json").write_text('{"images": []}')
    (tmp_path / "data" / "images" / "nested" / "1.jpg").write_bytes(b"a")
    (tmp_path / "base.yaml").write_text(
        "model: {name: rtmdet_tiny}\ndata: {train: {annotations: data/train.json, images: data/images}}\n")

    def key() -> str:
        wf = parse_workflow({"name": "k", "steps": [{"id": "train", "uses": "train", "with": {"config": "base.yaml"}}]},
                            base_dir=tmp_path)
        return step_keys(wf)["train"]

    first = key()
    assert key() == first
    (tmp_path / "data" / "train.json").write_text('{"images": [], "edited": true}')
    second = key()
    assert second != first
    (tmp_path / "data" / "images" / "nested" / "1.jpg").write_bytes(b"ab")  # two levels down
    assert key() != second
    assert code_identity().startswith(__import__("detflow").__version__)


def test_duplicate_key_is_exit_2_naming_both_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    from detflow.cli import main

    path = _write(tmp_path, GOOD.replace("  - id: distill\n", "  - id: distill\n    uses: train\n", 1))
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:11: duplicate key 'uses' (first at line 10)" in err
