"""Reads against a dead server or a missing store answer in one line, fast, and create nothing.

The timings are bounds, not benchmarks: the failure they catch took minutes (MLflow's retries).
"""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
import time

import mlflow
import pytest
from support.helpers import make_data, make_model
from support.mlflow_runs import train_run
from support.mlflow_server import free_port

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint, TrackerError, fits
from tracked_ckpt.integrations.mlflow import MlflowTracker
from tracked_ckpt.integrations.mlflow_store import check_readable

CLI = [sys.executable, "-m", "tracked_ckpt.cli"]
API_BOUND = 15.0  # seconds; the probe gives up after 5
CLI_BOUND = 45.0  # the same plus starting Python and importing MLflow on a busy machine


def cli(cwd, *args) -> tuple[subprocess.CompletedProcess, float]:
    """The command in a new process with no MLFLOW_* variables; returns it and how long it took."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    started = time.monotonic()
    done = subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return done, time.monotonic() - started


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no retry warnings, no traceback
    assert lines[0].startswith("tracked-ckpt: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["ls"],
        ["ls", "--experiment", "digits"],
        ["ls", "--all-experiments"],
        ["ls", "--run-id", "0123456789abcdef0123456789abcdef"],
        ["show", "digits-classifier"],
        ["promote", "digits-classifier", "--experiment", "digits"],
        ["pull", "digits-classifier", "--alias", "champion"],
        ["pull", "--run-id", "0123456789abcdef0123456789abcdef", "--epoch", "3"],
        ["rm", "digits-e0003", "--experiment", "digits"],
        ["rm", "m-0123456789abcdef0123456789abcdef"],
        ["diff", "digits-e0003", "digits-e0007"],
        ["ls", "--registered-model", "digits-classifier"],
    ],
)
def test_cli_against_a_dead_port_says_so_in_one_line(workdir, args):
    dead = f"http://127.0.0.1:{free_port()}"
    done, seconds = cli(workdir, *args, "--tracking-uri", dead)
    line = one_error_line(done)
    assert dead in line and "does not answer" in line and "--tracking-uri" in line, line
    assert seconds < CLI_BOUND, f"{args} took {seconds:.1f}s"
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.parametrize(
    "read",
    [
        lambda t: tracked_ckpt.list_checkpoints(tracker=t),
        lambda t: tracked_ckpt.list_checkpoints(tracker=t, experiment="digits"),
        lambda t: tracked_ckpt.list_checkpoints(tracker=t, run_id="0123456789abcdef0123456789abcdef"),
        lambda t: tracked_ckpt.best_checkpoint(tracker=t, experiment="digits"),
        lambda t: tracked_ckpt.promote_best("digits-classifier", tracker=t, experiment="digits"),
        lambda t: tracked_ckpt.registered_checkpoint("digits-classifier", tracker=t),
        lambda t: tracked_ckpt.download_checkpoint("digits-classifier", tracker=t),
        lambda t: tracked_ckpt.load_model("digits-classifier", tracker=t),
        lambda t: tracked_ckpt.load_model(run_id="0123456789abcdef0123456789abcdef", epoch=3, tracker=t),
        lambda t: tracked_ckpt.download_checkpoint(name="digits-e0003", experiment="digits", tracker=t),
        lambda t: tracked_ckpt.delete_checkpoint("digits-e0003", experiment="digits", tracker=t),
        lambda t: tracked_ckpt.delete_checkpoint("m-0123456789abcdef0123456789abcdef", tracker=t),
        lambda t: tracked_ckpt.compare_checkpoints("digits-e0003", "digits-e0007", tracker=t),
        lambda t: tracked_ckpt.registered_versions("digits-classifier", tracker=t),
    ],
    ids=[
        "list",
        "list-experiment",
        "list-run",
        "best",
        "promote",
        "registered",
        "download",
        "load",
        "load-by-epoch",
        "download-by-name",
        "rm",
        "rm-by-id",
        "diff",
        "registered-versions",
    ],
)
@pytest.mark.parametrize("configured", ["tracker", "environment"])
def test_api_against_a_dead_port_raises_one_line(workdir, monkeypatch, read, configured):
    monkeypatch.setattr(fits, "_LAST_DESTINATIONS", {})  # as in a new process
    dead = f"http://127.0.0.1:{free_port()}"
    if configured == "tracker":
        tracker: str | MlflowTracker = MlflowTracker(tracking_uri=dead)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
        mlflow.set_tracking_uri(dead)
        tracker = "mlflow"
    started = time.monotonic()
    try:
        with pytest.raises(TrackerError, match="does not answer") as raised:
            read(tracker)
    finally:
        mlflow.set_tracking_uri(None)
    seconds = time.monotonic() - started
    message = str(raised.value)
    assert dead in message and "MLFLOW_TRACKING_URI" in message and "\n" not in message
    assert "tracking_uri=" in message and "--tracking-uri" not in message  # Python's words; the CLI says flags
    assert seconds < API_BOUND, f"took {seconds:.1f}s"


def test_reading_in_a_folder_without_a_store_creates_none(workdir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(fits, "_LAST_DESTINATIONS", {})
    mlflow.set_tracking_uri(None)
    for read in (
        lambda: tracked_ckpt.list_checkpoints(),
        lambda: tracked_ckpt.promote_best("digits-classifier"),
        lambda: tracked_ckpt.load_model("digits-classifier"),
    ):
        with pytest.raises(TrackerError, match="No MLflow store here: .*mlflow.db does not exist"):
            read()
    assert not (workdir / "mlflow.db").exists()
    for args in (["ls"], ["show", "digits-classifier"], ["promote", "digits-classifier"]):
        done, _ = cli(workdir, *args)
        line = one_error_line(done)
        assert "No MLflow store here" in line and "--tracking-uri" in line, line
        assert not (workdir / "mlflow.db").exists()


def test_cli_against_the_real_server_still_reads(server_store, workdir):
    run_id = train_run([0.3, 0.2], run_name="on-the-server")
    done, _ = cli(workdir, "ls", "--tracking-uri", server_store, "--run-id", run_id)
    assert done.returncode == 0, done.stderr
    rows = done.stdout.strip().splitlines()[1:]
    assert len(rows) == 2 and all("on-the-server" in row and run_id in row for row in rows)
    done, _ = cli(workdir, "promote", f"fast-{run_id[:8]}", "--tracking-uri", server_store, "--run-id", run_id)
    assert done.returncode == 0 and "of run 'on-the-server'" in done.stdout, done.stderr


class NotFound(http.server.BaseHTTPRequestHandler):
    """A web server without MLflow at this path (or a proxy not forwarding /health): 404 for every request."""

    def do_GET(self):
        self.send_error(404)

    do_POST = do_GET

    def log_message(self, *args):
        pass


class BadGateway(NotFound):
    """A proxy whose MLflow behind it is down: 502 for every request."""

    def do_GET(self):
        self.send_error(502)

    do_POST = do_GET


def serving(handler):
    """An HTTP server on a free port answering with `handler`; yields its URI."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def not_found():
    yield from serving(NotFound)


@pytest.fixture
def bad_gateway():
    yield from serving(BadGateway)


def test_a_proxy_whose_mlflow_is_down_is_named_as_such(workdir, monkeypatch, bad_gateway):
    monkeypatch.setattr(fits, "_LAST_DESTINATIONS", {})
    tracker = MlflowTracker(tracking_uri=bad_gateway)
    expected = f"MLflow at {bad_gateway} fails \\(GET /health: HTTP 502\\)"
    for read in (
        lambda: tracked_ckpt.list_checkpoints(tracker=tracker, experiment="digits"),
        lambda: tracked_ckpt.load_model("digits-classifier", tracker=tracker),  # not "no alias": the server fails
    ):
        started = time.monotonic()
        with pytest.raises(TrackerError, match=expected):
            read()
        assert time.monotonic() - started < API_BOUND
    done, seconds = cli(workdir, "show", "digits-classifier", "--tracking-uri", bad_gateway)
    assert re.search(expected, one_error_line(done))
    assert seconds < CLI_BOUND


def test_a_404_on_health_is_not_refused_and_a_404_from_the_api_is_one_line_naming_the_fix(
    workdir, monkeypatch, not_found
):
    """A reverse proxy may serve MLflow under a path prefix or not forward /health: the probe lets
    it through; a URL whose API answers 404 (a plain web server, a missing prefix) is then named in
    one line with the fix, without retries, and never taken for an absent run, experiment or alias."""
    monkeypatch.setattr(fits, "_LAST_DESTINATIONS", {})
    check_readable(not_found)  # the probe does not refuse it
    check_readable(not_found + "/mlflow")
    tracker = MlflowTracker(tracking_uri=not_found)
    fix = "point MLFLOW_TRACKING_URI (or tracking_uri=) at the MLflow server's URL, with its path prefix if it has one."
    for read, endpoint in (
        (lambda: tracked_ckpt.list_checkpoints(tracker=tracker, experiment="digits"), "experiments/get-by-name"),
        (lambda: tracked_ckpt.list_checkpoints(tracker=tracker, run_id="0" * 32), "runs/get"),
        (lambda: tracked_ckpt.list_checkpoints(tracker=tracker), "experiments/search"),
        (lambda: tracked_ckpt.load_model("digits-classifier", tracker=tracker), "registered-models/alias"),
    ):
        started = time.monotonic()
        with pytest.raises(TrackerError) as raised:
            read()
        assert time.monotonic() - started < API_BOUND
        assert re.fullmatch(
            rf"MLflow at {not_found} answers HTTP 404 to /api/2.0/mlflow/{endpoint}: {re.escape(fix)}",
            str(raised.value),
        )
    for args, endpoint in ((["show", "digits-classifier"], "registered-models/alias"), (["ls"], "experiments/search")):
        done, seconds = cli(workdir, *args, "--tracking-uri", not_found)
        line = one_error_line(done)
        assert "not an MLflow tracking server" not in line and endpoint in line and "404" in line, line
        assert "(or --tracking-uri) at the MLflow server's URL" in line, line
        assert seconds < CLI_BOUND


def test_sync_against_a_dead_port_says_so_in_one_line_and_keeps_the_spool(workdir):
    dead = f"http://127.0.0.1:{free_port()}"
    callback = TrackedModelCheckpoint(
        "ckpt/{epoch}.keras", monitor="loss", tracker=MlflowTracker(tracking_uri=dead), wait_timeout=1
    )
    x, y = make_data()
    make_model().fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    spool = workdir / "ckpt" / ".tracked_ckpt" / "spool"
    waiting = sorted(f for f in os.listdir(spool) if f.endswith(".json"))
    assert len(waiting) == 2
    done, seconds = cli(workdir, "sync")
    line = one_error_line(done)
    assert f"MLflow at {dead} does not answer, so 2 checkpoint(s) still wait" in line, line
    assert "2 still pending" in done.stdout
    assert seconds < CLI_BOUND, f"sync took {seconds:.1f}s"
    assert sorted(f for f in os.listdir(spool) if f.endswith(".json")) == waiting
