"""``detflow compare`` / ``detflow.compare`` on a real MLflow SQLite store: selectors (sweep and its
parent's children, NAS, workflow, tag, experiment), the differing-params columns, seed groups with
mean ± std, sorting, JSON output, one-line errors (exit 2); and the trials of a real tiny sweep."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
import yaml

import detflow
from detflow import tracking
from detflow.cli import main
from detflow.errors import UserInputError

# config A: lr 0.01 over seeds 0, 1, 2; config B: lr 0.1 over seeds 0, 1 (val/bbox_mAP, train/loss)
A_MAP, B_MAP = (0.30, 0.32, 0.34), (0.40, 0.44)
A_LOSS, B_LOSS = (1.0, 1.2, 1.1), (0.5, 0.7)


def _run(name: str, *, parent=None, experiment="cmp-exp", tags=None, params=None, metrics=None, status="FINISHED"):
    run = (parent.child(name, tags=tags) if parent is not None
           else tracking.Run.create(name, experiment=experiment, tags=tags))
    run.log_params({"train.epochs": 3, **(params or {})})
    for step in (0, 1):  # the latest value (step 1) is the one compared
        run.log_metrics(step, {k: v * (0.5 if step == 0 else 1.0) for k, v in (metrics or {}).items()})
    run.end(status)
    return run


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private DETFLOW_HOME (embedded SQLite MLflow) holding two sweeps, a NAS and a workflow."""
    import mlflow

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure()
    parent = tracking.Run.create("cmp", experiment="cmp-exp", tags={"detflow.sweep": "cmp", "detflow.kind": "sweep"})
    parent.log_params({"space.lr": "choice"})
    ids: dict[str, str] = {}
    for lr, maps, losses in (("0.01", A_MAP, A_LOSS), ("0.1", B_MAP, B_LOSS)):
        for seed, (ap, loss) in enumerate(zip(maps, losses)):
            # the last seed of config A carries no detflow.sweep tag: found as the parent's child
            tags = {} if (lr, seed) == ("0.01", 2) else {"detflow.sweep": "cmp", "detflow.trial_id": f"{lr}-{seed}"}
            run = _run(f"lr={lr} seed={seed}", parent=parent, tags=tags,
                       params={"train.optimizer.lr": lr, "resolved.recipe.optimizer.lr": lr, "train.seed": seed,
                               "name": f"cmp-{lr}-{seed}"},
                       metrics={"val/bbox_mAP": ap, "val/bbox_mAP50": ap + 0.2, "train/loss": loss})
            ids[f"{lr}-{seed}"] = run.run_id
    other = tracking.Run.create("other", experiment="other-exp", tags={"detflow.sweep": "other", "detflow.kind": "sweep"})
    for i, lr in enumerate(("0.5", "0.9")):
        _run(f"other-{i}", parent=other, tags={"detflow.sweep": "other"}, params={"train.optimizer.lr": lr},
             metrics={"val/bbox_mAP": 0.9, "train/loss": 0.1})
    nas_parent = tracking.Run.create("nas1", experiment="nas-exp", tags={"detflow.nas": "nas1", "detflow.kind": "nas"})
    for i, (ap, ms) in enumerate(((0.2, 12.0), (0.25, 40.0), (float("nan"), 8.0))):
        _run(f"arch-{i}", parent=nas_parent, tags={"detflow.nas": "nas1", "detflow.trial_id": str(i)},
             params={"block.0": f"b{i}"}, metrics={"val/bbox_mAP": ap, "cost/latency_ms": ms},
             status="FAILED" if i == 2 else "FINISHED")
    wf = tracking.Run.create("wf-1", experiment="wf", tags={"detflow.workflow_run_id": "wf-1"})
    step = _run("train", parent=wf, tags={"detflow.workflow_run_id": "wf-1", "detflow.step_id": "train"},
                params={"model": "rtmdet_tiny"}, metrics={"val/bbox_mAP": 0.5})
    _run("rtmdet-train", parent=step, tags={"detflow.workflow_run_id": "wf-1"}, params={"model": "rtmdet_tiny"},
         metrics={"val/bbox_mAP": 0.5})
    _run("bench", parent=wf, tags={"detflow.workflow_run_id": "wf-1", "detflow.step_id": "bench"},
         params={"backend": "onnxruntime"}, metrics={"latency_ms": 3.0})
    yield ids
    mlflow.set_tracking_uri(None)


def test_sweep_trials_grouped_over_seeds_with_mean_and_std(store):
    table = detflow.compare(sweep="cmp")
    assert table.num_runs == 5 and len(table.rows) == 2  # the parent and the other sweep are left out
    assert {i for row in table.rows for i in row.run_ids} == set(store.values())
    # train.epochs is equal, name is identity, resolved.recipe.optimizer.lr repeats train.optimizer.lr
    assert table.params == ["train.optimizer.lr", "train.seed"]
    assert table.metrics == ["val/bbox_mAP", "val/bbox_mAP50"]  # the val/bbox_mAP* metrics present, in order
    best, worst = table.rows  # sorted by val/bbox_mAP, highest first
    assert best.params == {"train.optimizer.lr": "0.1", "train.seed": "0, 1"} and len(best.run_ids) == 2
    cell = best.metrics["val/bbox_mAP"]
    assert cell.mean == pytest.approx(statistics.fmean(B_MAP)) and cell.std == pytest.approx(statistics.stdev(B_MAP))
    assert best.cell("val/bbox_mAP") == "0.4200 ± 0.0283 (n=2)"
    assert worst.params["train.optimizer.lr"] == "0.01" and worst.cell("val/bbox_mAP") == "0.3200 ± 0.0200 (n=3)"
    assert worst.metrics["val/bbox_mAP50"].mean == pytest.approx(0.52)
    assert table.header() == ["run", "status", "train.optimizer.lr", "train.seed", "val/bbox_mAP", "val/bbox_mAP50"]
    assert table.text_rows()[0][:4] == [best.name, "FINISHED", "0.1", "0, 1"]


def test_one_row_per_run_and_a_min_metric_sorts_lowest_first(store):
    table = detflow.compare(sweep="cmp", metrics=["train/loss", "val/bbox_mAP"], group_seeds=False)
    assert len(table.rows) == 5 and all(len(r.run_ids) == 1 for r in table.rows)
    losses = [r.metrics["train/loss"].mean for r in table.rows]
    assert losses == sorted(B_LOSS + A_LOSS)  # a loss: lowest first
    assert table.rows[0].cell("train/loss") == "0.5000" and table.rows[0].params["train.seed"] == "0"


def test_nas_workflow_tag_and_experiment_selectors(store):
    nas = detflow.compare(nas="nas1", metrics=["val/bbox_mAP", "cost/latency_ms"])
    assert [r.name for r in nas.rows] == ["arch-1", "arch-0", "arch-2"]  # the NaN AP sorts last
    assert nas.rows[2].status == "FAILED" and nas.rows[2].cell("val/bbox_mAP") == "-"
    assert nas.params == ["block.0"]
    wf = detflow.compare(workflow="wf-1")  # the parent and the step run holding the training run are left out
    assert sorted(r.name for r in wf.rows) == ["bench", "rtmdet-train"]
    assert wf.rows[0].name == "rtmdet-train"  # has val/bbox_mAP; bench has none and sorts last
    other = detflow.compare(tags=["detflow.sweep=other"])
    assert sorted(r.name for r in other.rows) == ["other-0", "other-1"]
    by_exp = detflow.compare(experiment="other-exp", group_seeds=False)
    assert sorted(r.name for r in by_exp.rows) == ["other-0", "other-1"]  # its sweep parent summarises them
    both = detflow.compare(sweep="cmp", tags={"detflow.trial_id": "0.1-1"})
    assert [r.run_ids for r in both.rows] == [(store["0.1-1"],)]
    parents = detflow.compare(tags={"detflow.kind": "sweep"})  # asked for by kind: the parents themselves
    assert sorted(r.name for r in parents.rows) == ["cmp", "other"]
    tracking.Run.create("empty", experiment="cmp-exp", tags={"detflow.sweep": "empty", "detflow.kind": "sweep"})
    with pytest.raises(UserInputError, match="--sweep empty: no MLflow run matches"):  # a parent, no trial yet
        detflow.compare(sweep="empty")


def test_cli_json_table_and_one_line_errors(store, capsys):
    assert main(["compare", "--sweep", "cmp", "--metric", "val/bbox_mAP", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["num_runs"] == 5 and doc["metrics"] == ["val/bbox_mAP"] and doc["selection"] == "--sweep cmp"
    first = doc["rows"][0]
    assert first["n"] == 2 and first["params"]["train.optimizer.lr"] == "0.1"
    assert first["metrics"]["val/bbox_mAP"]["values"] == pytest.approx(list(B_MAP))
    assert first["metrics"]["val/bbox_mAP"]["std"] == pytest.approx(statistics.stdev(B_MAP))

    assert main(["compare", "--tag", "detflow.sweep=cmp", "--experiment", "cmp-exp"]) == 0
    out = capsys.readouterr().out
    assert "0.4200 ± 0.0283 (n=2)" in out and "train.optimizer.lr" in out and "other" not in out

    for args, needle in ((["--sweep", "nope"], "--sweep nope: no MLflow run matches"),
                         (["--experiment", "missing"], "--experiment missing: no such MLflow experiment"),
                         (["--sweep", "cmp", "--metric", "val/AP"], "--metric val/AP: no selected run logged it"),
                         (["--tag", "novalue"], "--tag novalue: expected KEY=VALUE"),
                         ([], "give a selector")):
        assert main(["compare", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, (args, err)
    with pytest.raises(UserInputError, match="--nas nas1 --tag detflow.sweep=cmp: no MLflow run matches"):
        detflow.compare(nas="nas1", tags={"detflow.sweep": "cmp"})


def test_compare_is_an_sdk_name():
    import detflow.sdk as sdk

    assert detflow.compare is sdk.compare and "compare" in detflow.__all__ and "compare" in sdk.__all__


# ------------------------------------------------------------------------------ a real tiny sweep
SWEEP = {
    "kind": "sweep", "name": "cmpsweep", "base": "base.yaml", "metric": "train/loss", "mode": "min",
    "space": {"train.optimizer.lr": {"loguniform": [1e-4, 0.1]}, "model.assigner.soft_center_alpha": {"uniform": [5.0, 20.0]}},
    "num_samples": 2, "max_concurrent": 2, "search": {"name": "random", "seed": 0}, "scheduler": {"name": "none"},
    "resources": {"workers": 1, "cpus_per_worker": 1},
}


@pytest.mark.slow
def test_compare_the_trials_of_a_real_sweep(tmp_path, monkeypatch, cli_env, tiny_rtmdet_base):
    from detflow.data import generate_synthetic

    generate_synthetic(tmp_path / "data", num_images=8, image_size=64, seed=0)
    tiny_rtmdet_base["train"]["epochs"] = 1
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_rtmdet_base))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    env = cli_env

    def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "detflow", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=timeout)

    r = cli("sweep", "sweep.yaml", "--json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sweep = json.loads(r.stdout.strip().splitlines()[-1])
    r = cli("compare", "--sweep", "cmpsweep", "--metric", "train/loss", "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    table = json.loads(r.stdout)
    assert table["num_runs"] == 2 and len(table["rows"]) == 2
    assert {"train.optimizer.lr", "model.assigner.soft_center_alpha"} <= set(table["params"])

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    children = tracking.Run(sweep["parent_run_id"]).children()
    assert {i for row in table["rows"] for i in row["run_ids"]} == {c.run_id for c in children}
    for row in table["rows"]:
        run = tracking.Run(row["run_ids"][0]).data()
        assert row["metrics"]["train/loss"]["mean"] == pytest.approx(run.metrics["train/loss"])
        assert float(row["params"]["train.optimizer.lr"]) == pytest.approx(float(run.params["train.optimizer.lr"]))
    losses = [row["metrics"]["train/loss"]["mean"] for row in table["rows"]]
    assert losses == sorted(losses)  # the sweep's mode is min; a loss sorts lowest first
    r = cli("compare", "--sweep", "cmpsweep", timeout=300)  # the default columns, as a table
    assert r.returncode == 0 and "cmpsweep" in r.stdout and "train.optimizer.lr" in r.stdout, r.stdout + r.stderr
