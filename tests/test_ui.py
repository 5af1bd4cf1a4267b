"""Browser test of the MLflow UI: what a person sees after training with TrackedModelCheckpoint.

A short run logs four checkpoints to the real MLflow server, the best one is
promoted, and headless Chromium (Debian's, driven by Playwright) reads the
pages: the experiment's Models view lists every checkpoint with its epoch
metrics and registered version, the champion's model page shows its metrics
and registry link, and the registry pages show version 1 with the alias
`champion` and the checkpoint's schema tags.

Screenshots land in the test's tmp dir; with TRACKED_CKPT_UPDATE_SCREENSHOTS=1
the Models view is also written to docs/models-view.png for the tutorial.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import uuid
from pathlib import Path

import mlflow
import pytest
from support.helpers import make_data, make_model
from support.mlflow_runs import logged_models
from support.ui_setup import CHROMIUM_ARGS, ChromiumUnavailable, ensure_chromium

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.integrations.mlflow import UI_TRAINING_VIEW

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # the `page` fixture skips (or fails on CI) with a clear reason
    sync_playwright = PlaywrightTimeout = None

DOCS = Path(__file__).resolve().parents[1] / "docs"
TIMEOUT_MS = 30_000
EPOCHS = 4
RUN_NAME = "tiny-run"

# A fresh profile: no saved "Model training" choice (the UI's default is GenAI, where the
# same table is "Agent versions"); the links we print and document carry
# ?workflowType=machine_learning, which is what must open the training view. Only the
# MLflow Assistant panel, which would open over the table on first visit, is kept shut.
INIT_SCRIPT = """
localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
"""

# The Models table is an ag-grid: rows split between a pinned and a scrolling
# container (same row-index), columns virtualised and rendered a frame after a
# resize. Read it through its ARIA attributes, keyed by column header, from a
# viewport wide enough for every column. `ready` holds once `rows` rows have a
# cell under every header and every `columns` header is there.
READ_GRID = """
({rows: n, columns}) => {
  const headers = {};
  for (const h of document.querySelectorAll('.ag-header-row-column [role=columnheader][aria-colindex]')) {
    headers[h.getAttribute('aria-colindex')] = h.innerText.trim();
  }
  const rows = {};
  for (const r of document.querySelectorAll('[role=row][row-index]')) {
    const row = rows[r.getAttribute('row-index')] ??= {};
    for (const c of r.querySelectorAll('[role=gridcell][aria-colindex]')) {
      row[headers[c.getAttribute('aria-colindex')] ?? c.getAttribute('aria-colindex')] = c.innerText.trim();
    }
  }
  const names = Object.values(headers);
  const full = Object.values(rows).filter(row => names.every(h => h in row));
  const ready = full.length >= n && columns.every(c => names.includes(c));
  return {ready, headers: names, rows: full};
}
"""


def _unavailable(reason: str):
    """Skip where a browser cannot be had; on CI (root, apt reachable) that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"UI test cannot run on CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium(request):
    """Debian's Chromium, installed with apt on first use (root only)."""
    try:
        path, seconds = ensure_chromium()
    except ChromiumUnavailable as exc:
        _unavailable(str(exc))
    if seconds is not None:  # say it on the terminal, past pytest's output capture
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\ntest_ui: installed Debian chromium with apt-get in {seconds:.1f}s")
    return path


@pytest.fixture
def page(chromium, tmp_path):
    """A fresh headless Chromium profile and page; closed after the test."""
    if sync_playwright is None:
        _unavailable("the `playwright` Python package is not installed (pip install -e '.[test]')")
    profile = tmp_path / "chromium-profile"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1600, "height": 900},
        )
        try:
            context.set_default_timeout(TIMEOUT_MS)
            context.add_init_script(INIT_SCRIPT)
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def fresh_names() -> tuple[str, str]:
    """An experiment and a registered-model name not used yet on the (shared) server.

    Plain names when they are free, as in the tutorial's screenshot; suffixed otherwise.
    """
    client = mlflow.MlflowClient()
    suffix = ""
    while client.get_experiment_by_name(f"tiny-ckpt-demo{suffix}") is not None or client.search_registered_models(
        filter_string=f"name = 'tiny-regressor{suffix}'"
    ):
        suffix = f"-{uuid.uuid4().hex[:6]}"
    return f"tiny-ckpt-demo{suffix}", f"tiny-regressor{suffix}"


def train_and_promote(experiment: str, registered_name: str):
    """A short run with validation metrics; every epoch checkpointed, the best one promoted."""
    mlflow.set_experiment(experiment)
    x, y = make_data(64)
    with mlflow.start_run(run_name=RUN_NAME) as run:
        callback = TrackedModelCheckpoint("ckpt/{epoch:02d}.keras", monitor="val_loss", mode="min")
        make_model("tiny").fit(
            x, y, validation_split=0.25, epochs=EPOCHS, batch_size=8, verbose=0, callbacks=[callback]
        )
    result = tracked_ckpt.promote_best(registered_name, run_id=run.info.run_id)
    assert result.promoted, result.reason
    return run, result


def read_models_table(page, names: list[str], columns: list[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The Models table as {model name: {column header: cell text}}, once every name and column shows."""
    for name in names:
        page.get_by_role("gridcell").filter(has_text=name).first.wait_for()
    size = page.viewport_size
    page.set_viewport_size({"width": 7000, "height": size["height"]})  # no virtualised columns
    try:
        arg = {"rows": len(names), "columns": columns}
        try:
            page.wait_for_function(f"arg => ({READ_GRID})(arg).ready", arg=arg)
        except PlaywrightTimeout:
            pass  # the assertions below say what is missing
        grid = page.evaluate(READ_GRID, arg)
    finally:
        page.set_viewport_size(size)
    table = {}
    for row in grid["rows"]:
        name = row.get("Model name", "").splitlines()[-1:]  # the cell starts with the row's colour swatch
        assert name, f"a row without a model name: {row}"
        table[name[0]] = row
    return grid["headers"], table


def as_float(text: str) -> float:
    return float(text.replace(",", ""))


def screenshot(page, path: Path) -> Path:
    page.screenshot(path=str(path))
    return path


def screenshot_models_view(page, path: Path) -> Path:
    """The Models view as the tutorial shows it: the metric columns in sight.

    Cosmetic only, and best effort: the sidebar collapsed and the constant
    Status / Logged from / Dataset columns hidden, so the epoch metrics fit in
    1800 px. If the UI's menus changed, the screenshot is just wider.
    """
    size = page.viewport_size
    try:
        page.add_style_tag(content="[data-assistant-ui] { display: none !important; }")
        page.get_by_role("button", name="Toggle sidebar").click(timeout=3000)
        page.get_by_role("button", name="Columns").click(timeout=3000)
        menu = page.get_by_role("menu")
        for column in ("Status", "Logged from", "Dataset"):
            menu.get_by_text(column, exact=True).click(timeout=3000)
        page.keyboard.press("Escape")
        menu.wait_for(state="hidden", timeout=3000)
        page.get_by_role("columnheader", name="Dataset", exact=True).wait_for(state="detached", timeout=3000)
        page.evaluate("document.activeElement?.blur()")  # no focus ring on the Columns button
        page.set_viewport_size({"width": 1800, "height": 400})
    except PlaywrightTimeout:
        page.keyboard.press("Escape")
        page.set_viewport_size({"width": 3000, "height": 500})
    page.get_by_role("columnheader", name="val_loss", exact=True).wait_for()
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
    return path


def test_checkpoints_and_champion_in_the_mlflow_ui(page, server_store, workdir, tmp_path):
    experiment, registered = fresh_names()
    run, result = train_and_promote(experiment, registered)
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    models = logged_models(run_id, experiment_id)
    names = [m.name for m in models]
    assert names == [f"tiny-e{epoch:04d}" for epoch in range(1, EPOCHS + 1)]
    champion = result.checkpoint
    base = server_store.rstrip("/")

    # -- the experiment's Models view, by the link the docs give ---------------------------
    page.goto(f"{base}/#/experiments/{experiment_id}/models{UI_TRAINING_VIEW}")
    page.get_by_role("heading", name="Models").first.wait_for()  # "Agent versions" in GenAI mode
    metric_keys = sorted({m.key for model in models for m in model.metrics})
    assert {"loss", "val_loss", "mae", "val_mae"} <= set(metric_keys)
    param_keys = sorted({key for model in models for key in (model.params or {})})
    columns = ["Model name", "Status", "Source run", "Registered models", *metric_keys, *param_keys]
    headers, table = read_models_table(page, names, columns)

    assert sorted(table) == sorted(names), f"rows {sorted(table)} != checkpoints {names}"
    missing = sorted(set(columns) - set(headers))
    assert not missing, f"columns {missing} not in the Models table (headers: {headers})"
    for model in models:
        row = table[model.name]
        assert row["Status"] == "Ready", row
        assert row["Source run"] == RUN_NAME, row
        for metric in model.metrics:  # one value per key: step=epoch
            shown = as_float(row[metric.key])
            assert math.isclose(shown, metric.value, rel_tol=1e-9), (model.name, metric.key, shown, metric.value)
        # Whatever the tracker logs as LoggedModel params is a column too (MLflow shows no model tags here).
        for key, value in (model.params or {}).items():
            assert row.get(key) == value, (model.name, key, row.get(key), value)
        if "mlflow.source.name" in model.tags:
            assert os.path.basename(model.tags["mlflow.source.name"]) in row["Logged from"], row
        if model.model_id == champion.id:
            assert registered in row["Registered models"] and "v1" in row["Registered models"], row
        else:
            assert registered not in row["Registered models"], row
    # The best checkpoint by val_loss is the one registered.
    best = min(models, key=lambda m: {x.key: x.value for x in m.metrics}["val_loss"])
    assert best.model_id == champion.id and champion.record.epoch == int(best.tags["tracked_ckpt.epoch"])

    models_png = screenshot_models_view(page, tmp_path / "models-view.png")

    # -- the champion's model page, reached through the table's link -----------------------
    page.get_by_role("link", name=champion.record.name, exact=True).click()
    page.wait_for_url(f"**/models/{champion.id}**")
    page.get_by_text("About this logged model").wait_for()
    for metric in best.metrics:  # Metric | Dataset | Source run | Value
        metric_row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=metric.key, exact=True))
        cells = [c.strip() for c in metric_row.first.get_by_role("cell").all_inner_texts()]
        assert cells[0] == metric.key and RUN_NAME in cells, cells
        assert math.isclose(as_float(cells[-1].rstrip(".…")), metric.value, rel_tol=1e-6), cells
    details = page.locator("body").inner_text()
    assert champion.id in details and run_id in details, details
    page.locator(f'a[href*="/runs/{run_id}"]').first.wait_for()  # Source run
    page.locator(f'a[href*="/models/{registered}/versions/1"]').first.wait_for()  # Model versions: <name> v1
    screenshot(page, tmp_path / "logged-model.png")

    # -- the registered model: version 1 with the alias champion ---------------------------
    version = mlflow.MlflowClient().get_model_version_by_alias(registered, "champion")
    assert version.version == "1"
    page.goto(f"{base}/#/models/{registered}?workflowType=machine_learning")
    version_row = page.get_by_role("row").filter(has_text="Version 1")
    version_row.first.wait_for()
    row_text = version_row.first.inner_text()
    assert re.search(r"@\s*champion", row_text), row_text
    assert re.search(rf"tracked_ckpt\.epoch\s*:\s*{champion.record.epoch}\b", row_text), row_text
    # One line a person reads, next to the tags for machines.
    description = champion.record.summary()
    assert version.description == description
    assert champion.record.name in description and f"epoch {champion.record.epoch}" in description
    assert f"val_loss={champion.record.value:.5g}" in description
    assert ("(clean)" in description or "(dirty)" in description) if champion.record.git_commit else True
    assert page.get_by_role("row").filter(has_text="Version 2").count() == 0
    screenshot(page, tmp_path / "registered-model.png")

    page.goto(f"{base}/#/models/{registered}/versions/1?workflowType=machine_learning")
    page.get_by_text("Source Model").first.wait_for()
    source_model = page.locator(f'a[href*="/models/{champion.id}"]').first  # Source Model
    assert source_model.inner_text().strip() == champion.record.name
    source_run = page.locator(f'a[href*="/runs/{run_id}"]').first  # Source Run
    assert source_run.inner_text().strip() == RUN_NAME
    page.get_by_text(description).first.wait_for()  # the version's Description
    aliases = page.get_by_test_id("descriptions-item").filter(has=page.get_by_text("Aliases", exact=True))
    aliases.get_by_title("champion", exact=True).wait_for()  # the "@ champion" alias tag
    tracked_tags = {k: v for k, v in version.tags.items() if k.startswith("tracked_ckpt.")}
    assert tracked_tags["tracked_ckpt.name"] == champion.record.name
    page.get_by_role("row").filter(has_text="tracked_ckpt.sha256").first.wait_for()
    shown_tags = {}
    for tag_row in page.get_by_role("row").filter(has_text="tracked_ckpt.").all():
        cells = [c.strip() for c in tag_row.get_by_role("cell").all_inner_texts()]
        if len(cells) >= 2:
            shown_tags[cells[0]] = cells[1]
    assert shown_tags == tracked_tags
    screenshot(page, tmp_path / "model-version.png")

    if os.environ.get("TRACKED_CKPT_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(models_png, DOCS / "models-view.png")
