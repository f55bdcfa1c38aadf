"""Workflows on the team services: state in PostgreSQL, lineage on an MLflow server whose backend
is PostgreSQL and whose artifacts are in S3; two drivers sharing one PostgreSQL state DB."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.services


def _keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_workflow_state_lives_in_postgresql(tiny_workflow):
    from sqlalchemy import create_engine, text

    result = tiny_workflow.result
    assert result["status"] == "succeeded", result
    assert {sid: s["status"] for sid, s in result["steps"].items()} == {"synth": "succeeded", "train": "succeeded"}
    engine = create_engine(tiny_workflow.state_url)
    assert engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        run = conn.execute(text("SELECT status, mlflow_run_id, finished_at FROM workflow_runs WHERE id = :i"),
                           {"i": result["run_id"]}).one()
        steps = conn.execute(text("SELECT step_id, status, attempts, outputs FROM step_runs WHERE run_id = :i "
                                  "ORDER BY step_id"), {"i": result["run_id"]}).all()
    engine.dispose()
    assert run.status == "succeeded" and run.mlflow_run_id and run.finished_at
    assert [(s.step_id, s.status, s.attempts) for s in steps] == [("synth", "succeeded", 1), ("train", "succeeded", 1)]
    outputs = json.loads(steps[1].outputs)
    assert outputs["checkpoint"] and outputs["metrics"]


def test_runs_visible_through_the_server_with_artifacts_in_s3(tiny_workflow, s3):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tiny_workflow.tracking_url)
    exp = client.get_experiment_by_name(tiny_workflow.experiment)
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = next(r for r in runs if r.info.run_name == tiny_workflow.result["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["detflow.status"] == "succeeded"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"synth", "train"}
    assert children["synth"].data.metrics["num_images"] == 12
    train = children["train"]
    assert any(k.startswith("val/") for k in train.data.metrics), train.data.metrics
    # the training run itself is nested under the step's run, with one value per epoch
    training = client.get_run(tiny_workflow.result["steps"]["train"]["outputs"]["training_run_id"])
    assert training.data.tags["mlflow.parentRunId"] == train.info.run_id
    assert sorted(m.step for m in client.get_metric_history(training.info.run_id, "epoch")) == [0, 1]

    keys = _keys(s3.client(), "mlflow-artifacts")
    assert any(k.endswith(f"{parent.info.run_id}/artifacts/workflow.yaml") for k in keys), keys[:20]
    model_keys = [k for k in keys if f"{train.info.run_id}/artifacts/model/" in k]
    assert {k.rsplit("/", 1)[1] for k in model_keys} >= {"model.pt", "config.yaml", "meta.json"}
    meta = json.loads(open(client.download_artifacts(train.info.run_id, "model/meta.json")).read())
    assert meta["model"] == "rtmdet_tiny" and meta["num_classes"] == 2

    version = client.get_model_version_by_alias(tiny_workflow.registered_model, "candidate")
    assert version.run_id == train.info.run_id and version.tags["detflow.source_step"] == "train"


def _synth_workflow(name: str, seed: int) -> dict:
    step = lambda sid, needs, k: {"id": sid, "uses": "synth", "needs": needs,  # noqa: E731
                                  "with": {"num_images": 4, "image_size": 32, "num_classes": 2, "seed": seed + k}}
    return {"kind": "workflow", "name": name, "steps": [step("a", [], 0), step("b", [], 1), step("c", ["a"], 2), step("d", ["b", "c"], 3)]}


def test_two_workflows_at_once_on_one_postgresql_state(tmp_path, state_url, child_env):
    from sqlalchemy import create_engine, text

    env = child_env()
    procs = []
    for i, name in enumerate(("svc-concurrent-1", "svc-concurrent-2")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_synth_workflow(name, seed=100 * (i + 1))))
        procs.append(subprocess.Popen([sys.executable, "-m", "detflow", "run", str(path), "--state-url", state_url,
                                       "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    run_ids = [json.loads(("\n" + out)[("\n" + out).rindex("\n{\n") + 1:])["run_id"] for out, _ in outs]

    engine = create_engine(state_url)
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT id, status, started_at, finished_at FROM workflow_runs "
                                 "WHERE id IN (:a, :b)"), {"a": run_ids[0], "b": run_ids[1]}).all()
        rows = conn.execute(text("SELECT run_id, step_id, status, attempts, outputs, started_at, finished_at "
                                 "FROM step_runs WHERE run_id IN (:a, :b)"), {"a": run_ids[0], "b": run_ids[1]}).all()
    engine.dispose()
    assert sorted(r.status for r in runs) == ["succeeded", "succeeded"]
    starts, ends = sorted(r.started_at for r in runs), sorted(r.finished_at for r in runs)
    assert starts[1] < ends[0], "the two drivers did not overlap"
    assert len(rows) == 8
    for row in rows:  # every update of both drivers is there: final status, one attempt, outputs, times
        assert (row.status, row.attempts) == ("succeeded", 1), row
        assert json.loads(row.outputs)["dataset"]["train_json"].endswith("train.json")
        assert row.started_at <= row.finished_at
    assert {r.run_id for r in rows} == set(run_ids)
