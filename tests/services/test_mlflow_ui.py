"""The MLflow UI of the team server, in a real browser (Playwright + Debian's headless Chromium):
a finished workflow's parent run, its step child runs and their metrics, a training run's description,
dataset inputs (name and digest), logged model and system-metrics charts, a step run's logged model,
the registered model version with alias ``candidate`` and its source logged model, and the compare page of the trials of a real ``detflow sweep`` and of a real
``detflow nas`` (parallel-coordinates axes for the searched knobs and the metrics) with the search
plots their parent runs log (importances, metric per trial, Pareto front), and the runs table
grouped by workflow run and by sweep (one group each).

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

    # the version comes from the train step's logged model: its page names it as the source model
    assert version.source.startswith("models:/m-")
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    page.goto(f"{tiny_workflow.tracking_url}/#/models/{tiny_workflow.registered_model}/versions/{version.version}")
    page.get_by_text("Source Model").first.wait_for()
    _tidy(page)
    body = page.inner_text("body")
    assert model.name in body and client.get_run(model.source_run_id).info.run_name in body


def _training_run(client, experiment_id: str, workflow_run_id: str):
    """The training run nested under the workflow's ``train`` step (tagged ``detflow.kind = train``)."""
    runs = client.search_runs([experiment_id], max_results=50, filter_string=(
        f"tags.`detflow.workflow_run_id` = '{workflow_run_id}' and tags.`detflow.kind` = 'train'"))
    assert runs, f"no training run in workflow run {workflow_run_id}"
    return runs[0]


def test_run_pages_show_datasets_models_description_and_system_metrics(page, tiny_workflow, shots):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tiny_workflow.tracking_url)
    exp = client.get_experiment_by_name(tiny_workflow.experiment)
    step = _runs_by_name(client, exp.experiment_id)["train"]
    train = _training_run(client, exp.experiment_id, tiny_workflow.result["run_id"])
    datasets = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
                for d in train.inputs.dataset_inputs}
    assert set(datasets) == {"train", "val"}
    assert all(len(d.digest) == 16 for d in datasets.values())
    models = [client.get_logged_model(o.model_id) for o in step.outputs.model_outputs]
    assert models and models[0].source_run_id == step.info.run_id
    assert train.data.tags["mlflow.source.name"] == f"detflow workflow {tiny_workflow.experiment}"
    assert any(k.startswith("system/cpu_utilization") for k in train.data.metrics)

    page.goto(f"{tiny_workflow.tracking_url}/#/experiments/{exp.experiment_id}/runs/{train.info.run_id}")
    shown = f"{datasets['train'].name} ({datasets['train'].digest})"  # the train split, then "+1" (val)
    page.get_by_text(shown).first.wait_for()
    _tidy(page)
    body = page.inner_text("body")
    (shots / "training-run-body.txt").write_text(body)
    assert train.data.tags["mlflow.note.content"] in body and shown in body and "+1" in body
    assert "rtmdet_tiny-best" in body  # the Models section of the run: its best checkpoint
    page.screenshot(path=str(shots / "training-run.png"), full_page=True)
    page.get_by_text("System metrics", exact=True).first.click()
    page.get_by_text("cpu_utilization_percentage").first.wait_for()
    page.screenshot(path=str(shots / "system-metrics.png"))

    page.goto(f"{tiny_workflow.tracking_url}/#/experiments/{exp.experiment_id}/runs/{step.info.run_id}")
    page.get_by_text(models[0].name).first.wait_for()
    _tidy(page)
    body = page.inner_text("body")
    (shots / "step-run-body.txt").write_text(body)
    assert step.data.tags["mlflow.note.content"] in body and models[0].name in body
    page.screenshot(path=str(shots / "step-run-models.png"), full_page=True)


def _groups(page, tracking_url: str, experiment_id: str, tag: str, shot: Path) -> tuple[dict[str, int], str]:
    """The runs table of ``experiment_id`` grouped by ``tag`` (the table's "Group by" menu):
    ``{group label: number of runs}``, as the group header rows show them, and the table's text."""
    import re

    page.goto(f"{tracking_url}/#/experiments/{experiment_id}")
    page.get_by_text("Model training", exact=True).first.wait_for()
    _tidy(page)
    page.get_by_text("Model training", exact=True).first.click()
    page.get_by_role("button", name="Group by").click()
    page.get_by_text(tag, exact=True).click()
    page.keyboard.press("Escape")
    page.get_by_text("Group: ").first.wait_for()
    page.wait_for_timeout(500)
    page.screenshot(path=str(shot))
    headers = [row.inner_text() for row in page.get_by_role("row").filter(has_text="Group: ").all()]
    found = (re.search(r"Group: (\S+)\s+(\d+)", text) for text in headers)
    table = page.inner_text("body")
    shot.with_suffix(".txt").write_text(table)
    return {m.group(1): int(m.group(2)) for m in found if m}, table


def _tagged(client, experiment_id: str, tag: str) -> dict[str, int]:
    """``{tag value: number of runs}`` of the experiment's runs that carry ``tag`` (the MLflow API)."""
    counts: dict[str, int] = {}
    for run in client.search_runs([experiment_id], max_results=500):
        value = run.data.tags.get(tag)
        if value:
            counts[value] = counts.get(value, 0) + 1
    return counts


def test_group_by_workflow_run_and_by_sweep_gives_one_group_each(page, tiny_workflow, tiny_sweep, shots):
    """The runs table grouped by ``detflow.workflow_run_id`` shows one group per workflow run holding
    its parent, step and training runs; grouped by ``detflow.sweep``, the sweep's parent and trials.
    A fresh browser context, so that the grouping (kept in local storage) does not leak into other tests."""
    from mlflow.tracking import MlflowClient

    context = page.context.browser.new_context(viewport={"width": 1400, "height": 860})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    try:
        client = MlflowClient(tracking_uri=tiny_workflow.tracking_url)
        exp = client.get_experiment_by_name(tiny_workflow.experiment).experiment_id
        expected = _tagged(client, exp, "detflow.workflow_run_id")
        assert expected.get(tiny_workflow.result["run_id"], 0) >= 3  # parent, steps, the nested training
        shown, _ = _groups(tab, tiny_workflow.tracking_url, exp, "detflow.workflow_run_id",
                           shots / "runs-grouped-by-workflow.png")
        assert shown == expected

        client = MlflowClient(tracking_uri=tiny_sweep.tracking_url)
        name = tiny_sweep.config["name"]
        expected = _tagged(client, tiny_sweep.experiment_id, "detflow.sweep")
        assert expected[name] == len(tiny_sweep.trial_run_ids) + 1  # the parent and its trials
        shown, table = _groups(tab, tiny_sweep.tracking_url, tiny_sweep.experiment_id, "detflow.sweep",
                               shots / "runs-grouped-by-sweep.png")
        assert shown == expected
        for run_id in tiny_sweep.trial_run_ids:  # each trial's row: its dataset (name, digest) and its model
            trial = client.get_run(run_id)
            labels = {f"{d.dataset.name} ({d.dataset.digest})" for d in trial.inputs.dataset_inputs}
            assert any(label in table for label in labels), (labels, table[-2000:])
            [out] = trial.outputs.model_outputs
            assert client.get_logged_model(out.model_id).name in table
    finally:
        context.close()
