"""The MLflow UI of the team server, in a real browser (Playwright + Debian's headless Chromium):
a finished workflow's parent run, its step child runs and their metrics, the registered model version
with alias ``candidate``, and the compare page of the trials of a real ``detflow sweep`` and of a real
``detflow nas`` (parallel-coordinates axes for the searched knobs and the metrics) with the search
plots their parent runs log (importances, metric per trial, Pareto front).

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
    """Dismiss the feature tour pop-over and the assistant panel (they cover the page). On a loaded
    machine one may still be animating over the other: a click it intercepts becomes Escape."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_timeout(1000)
    for name in ("Got it", "Close"):
        button = page.get_by_role("button", name=name, exact=True)
        if button.count() and button.first.is_visible():
            try:
                button.first.click(timeout=10_000)
            except PlaywrightTimeout:
                page.keyboard.press("Escape")


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


def _compare_trials(page, search, shots, name: str) -> None:
    """Open the compare page of a search's trial runs (all child runs of its parent) and wait for the
    parallel-coordinates plot; its HTML goes to ``shots/NAME.html`` for a failing assertion."""
    ids, exp = search.trial_run_ids, search.experiment_id
    page.goto(f"{search.tracking_url}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([exp])}")
    page.get_by_text("Parallel Coordinates Plot").first.wait_for()
    _tidy(page)
    page.locator(".js-plotly-plot .parcoords .axis-title").first.wait_for()
    (shots / f"{name}.html").write_text(page.content())
    assert f"Comparing {len(ids)} Runs" in page.inner_text("body")


def _choose_axes(page, params: list[str], metrics: list[str]) -> set[str]:
    """Make PARAMS and METRICS the parallel-coordinates axes ("Clear All", then each picked in the
    "Parameters:" and "Metrics:" multi-selects: MLflow preselects 3 differing params and 1 metric)."""
    page.get_by_role("button", name="Clear All").click()
    selects = page.locator("input[role='combobox'][id^='dubois-select']")
    for index, keys in ((0, params), (1, metrics)):
        for key in keys:
            _pick(page, selects.nth(index), key)
    page.wait_for_timeout(1000)
    return set(page.locator(".js-plotly-plot .parcoords .axis-title").all_text_contents())


def _pick(page, select, key: str, limit: int = 50) -> None:
    """Type KEY into the open select, move the active option onto the one named KEY, choose it."""
    select.click()
    select.fill(key)
    for _ in range(limit):
        active = select.get_attribute("aria-activedescendant")
        if active and page.locator(f"[id='{active}']").get_attribute("aria-label") == key:
            page.keyboard.press("Enter")
            break
        page.keyboard.press("ArrowDown")
    else:
        raise AssertionError(f"no option {key!r} in the parallel-coordinates select")
    page.keyboard.press("Escape")


def _artifact_image(page, search, path: str, shot: Path) -> int:
    """Open PATH in the artifacts view of the search's parent run; returns the image's natural width."""
    page.goto(f"{search.tracking_url}/#/experiments/{search.experiment_id}/runs/{search.parent_run_id}"
              f"/artifacts/{path}")
    page.get_by_text(path.rsplit("/", 1)[-1], exact=True).first.wait_for()
    _tidy(page)
    image = page.locator("img[src^='blob:'], img[src*='get-artifact']").first
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    page.screenshot(path=str(shot))
    return image.evaluate("img => img.naturalWidth")


def test_compare_page_of_a_real_sweep_shows_its_knobs_and_metric(page, tiny_sweep, shots):
    knobs, metric = sorted(tiny_sweep.config["space"]), tiny_sweep.config["metric"]
    assert len(tiny_sweep.trial_run_ids) == tiny_sweep.config["num_samples"] == 4
    _compare_trials(page, tiny_sweep, shots, "compare-sweep-trials")
    axes = _choose_axes(page, knobs, [metric])
    assert axes == {*knobs, metric}, axes  # one axis per swept knob, and the sweep's metric
    page.screenshot(path=str(shots / "compare-sweep-trials.png"))


@pytest.mark.parametrize("artifact", ["search/param_importances.png", "search/metric_vs_trial.png"])
def test_sweep_parent_run_shows_its_search_plots(page, tiny_sweep, shots, artifact):
    width = _artifact_image(page, tiny_sweep, artifact, shots / f"sweep-{Path(artifact).stem}.png")
    assert width > 0


def test_compare_page_of_a_real_nas_shows_decisions_cost_and_ap(page, tiny_nas, shots):
    from mlflow.tracking import MlflowClient

    assert len(tiny_nas.trial_run_ids) == tiny_nas.config["num_samples"] == 4
    client = MlflowClient(tracking_uri=tiny_nas.tracking_url)
    values: dict[str, set[str]] = {}
    for run_id in tiny_nas.trial_run_ids:  # the searched decisions each trial logged as params
        for key, value in client.get_run(run_id).data.params.items():
            if key.startswith("arch."):
                values.setdefault(key, set()).add(value)
    decisions = sorted(k for k, v in values.items() if len(v) > 1)[:4]  # ones the trials differ in
    assert decisions, f"no arch.* params differ between the NAS trials: {sorted(values)}"
    metrics = [tiny_nas.config["metric"], f"cost/{tiny_nas.config['cost']}"]
    _compare_trials(page, tiny_nas, shots, "compare-nas-trials")
    axes = _choose_axes(page, decisions, metrics)
    assert axes == {*decisions, *metrics}, axes
    page.screenshot(path=str(shots / "compare-nas-trials.png"))


@pytest.mark.parametrize("artifact, shot", [("search/pareto_front.png", "nas-pareto"),
                                             ("search/param_importances.png", "nas-param_importances")])
def test_nas_parent_run_shows_its_pareto_front_and_importances(page, tiny_nas, shots, artifact, shot):
    assert _artifact_image(page, tiny_nas, artifact, shots / f"{shot}.png") > 0


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
