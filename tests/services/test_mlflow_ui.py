"""The MLflow UI of the team server, in a real browser (Playwright + Debian's headless Chromium):
a finished workflow's parent run, its step child runs and their metrics, the compare page of two
sweep trials (parallel-coordinates plot) and the registered model version with alias ``candidate``.

Screenshots go to the pytest tmp dir (or ``$DETFLOW_SCREENSHOT_DIR``, which
``scripts/update_screenshots.sh`` sets before copying them to docs/img/).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.services

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    target = os.environ.get("DETFLOW_SCREENSHOT_DIR")
    path = Path(target) if target else tmp_path_factory.mktemp("ui_screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def page():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install 'detflow[services]'", pytrace=False)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run .ci/services.sh (apt-get install -y chromium)", pytrace=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        tab = browser.new_page(viewport={"width": 1400, "height": 860})
        tab.set_default_timeout(TIMEOUT_MS)
        yield tab
        browser.close()


def _tidy(page) -> None:
    """Dismiss the feature tour pop-over and the assistant panel (they cover the page)."""
    page.wait_for_timeout(1000)
    for name in ("Got it", "Close"):
        button = page.get_by_role("button", name=name, exact=True)
        if button.count() and button.first.is_visible():
            button.first.click()


def _runs_by_name(client, experiment_id: str) -> dict:
    return {r.info.run_name: r for r in client.search_runs([experiment_id], max_results=200)}


def test_workflow_parent_steps_and_metrics_are_shown(page, tiny_workflow, shots):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tiny_workflow.tracking_url)
    exp = client.get_experiment_by_name(tiny_workflow.experiment)
    runs = _runs_by_name(client, exp.experiment_id)
    parent_name = tiny_workflow.result["run_id"]
    train = runs["train"]

    page.goto(f"{tiny_workflow.tracking_url}/#/experiments/{exp.experiment_id}")
    page.get_by_text("Model training", exact=True).first.wait_for()  # MLflow 3 opens in GenAI mode
    _tidy(page)
    page.get_by_text("Model training", exact=True).first.click()
    parent_row = page.get_by_role("row").filter(has_text=parent_name)
    parent_row.wait_for()
    parent_row.locator("button[data-component-id*='runnamecellrenderer']").click()  # expand its children
    for step in ("synth", "train"):
        page.get_by_role("row").filter(has_text=step).first.wait_for()
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "workflow-runs.png"))

    page.goto(f"{tiny_workflow.tracking_url}/#/experiments/{exp.experiment_id}/runs/{train.info.run_id}")
    page.get_by_text("val/bbox_mAP50", exact=True).first.wait_for()
    _tidy(page)
    body = page.inner_text("body")
    assert "Parent run" in body and parent_name in body
    for key, value in train.data.metrics.items():
        if key in ("val/bbox_mAP50", "val/bbox_mAP"):
            assert key in body and f"{value:.4g}"[:4] in body
    page.screenshot(path=str(shots / "step-run.png"))


def _two_trials(client, experiment_id: str) -> list[str]:
    """Two trials of a learning-rate sweep, nested under a sweep run (as ``detflow.tune`` logs them)."""
    sweep = client.create_run(experiment_id, run_name="sweep-lr", tags={"detflow.kind": "sweep"})
    ids = []
    for i, (lr, batch, ap50) in enumerate(((0.001, 2, 0.21), (0.004, 4, 0.34))):
        run = client.create_run(experiment_id, run_name=f"trial_{i}", tags={
            "mlflow.parentRunId": sweep.info.run_id, "detflow.kind": "trial"})
        client.log_param(run.info.run_id, "train.optimizer.lr", lr)
        client.log_param(run.info.run_id, "train.batch_size", batch)
        for epoch in range(3):
            client.log_metric(run.info.run_id, "val/bbox_mAP50", ap50 * (epoch + 1) / 3, step=epoch)
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    client.set_terminated(sweep.info.run_id)
    return ids


def test_compare_page_of_two_trials_renders_parallel_coordinates(page, tiny_workflow, shots):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tiny_workflow.tracking_url)
    exp = client.get_experiment_by_name(tiny_workflow.experiment)
    ids = _two_trials(client, exp.experiment_id)
    page.goto(f"{tiny_workflow.tracking_url}/#/compare-runs?runs={json.dumps(ids)}"
              f"&experiments={json.dumps([exp.experiment_id])}")
    page.get_by_text("Parallel Coordinates Plot").first.wait_for()
    _tidy(page)
    plot = page.locator(".js-plotly-plot .parcoords")
    plot.first.wait_for()
    axes = page.locator(".js-plotly-plot .parcoords .axis-title").all_text_contents()
    assert {"train.optimizer.lr", "train.batch_size", "val/bbox_mAP50"} <= set(axes), axes
    assert "Comparing 2 Runs" in page.inner_text("body")
    page.screenshot(path=str(shots / "compare-trials.png"))


def test_registered_model_version_has_candidate_alias(page, tiny_workflow, shots):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tiny_workflow.tracking_url)
    version = client.get_model_version_by_alias(tiny_workflow.registered_model, "candidate")
    page.goto(f"{tiny_workflow.tracking_url}/#/models/{tiny_workflow.registered_model}")
    page.get_by_text("@ candidate").first.wait_for()
    _tidy(page)
    row = page.get_by_role("row").filter(has_text="@ candidate")
    assert f"Version {version.version}" in row.first.inner_text()
    page.screenshot(path=str(shots / "registered-model.png"))
