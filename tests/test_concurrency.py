"""Concurrency, production-shaped: four training processes logging at once to one MLflow server.

Each stack gets one sweep (module-scoped, run once, asserted by several tests):
four real training subprocesses, each its own run with scripted `score`
values (so every run's best is known), started together behind a barrier so
their fits, uploads and end-of-job promotions overlap. Two of them attach the
way most users do (`MLFLOW_TRACKING_URI` + `MLFLOW_EXPERIMENT_NAME`, fluent
run), two with an explicit `MlflowTracker(tracking_uri=..., experiment=...)`.

Stacks:
* "sqlite": the session's `mlflow server` from conftest (sqlite, local proxied artifacts).
* "postgres-s3": `mlflow server` (2 workers) on a private PostgreSQL cluster with
  artifacts in an S3 bucket served by moto (tests/production_stack.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import keras
import mlflow
import numpy as np
import pytest
from helpers import make_data, make_model
from mlflow.entities import LoggedModelStatus
from production_stack import ARTIFACT_PREFIX, ProductionStack, StackUnavailable

import tracked_ckpt
from tracked_ckpt.integrations.mlflow import MlflowTracker

pytestmark = pytest.mark.slow

TESTS = os.path.dirname(os.path.abspath(__file__))

# One monitored metric, mode "min", for every run (so the experiment-wide best is meaningful).
# None: the metric is missing that epoch (the checkpoint is still written and logged, never best).
SCORES = {
    "w0": [0.90, 0.50, 0.70, 0.30, 0.40],  # best: epoch 4
    "w1": [0.60, 0.65, 0.20, 0.25, 0.22],  # best: epoch 3
    "w2": [0.80, None, 0.75, 0.90, 0.10],  # best: epoch 5, and the best of the sweep
    "w3": [0.35, 0.34, 0.33, 0.32, 0.31],  # every epoch a new best
}
EXPLICIT_TRACKER = {"w0": False, "w1": True, "w2": False, "w3": True}
EPOCHS = 5

WORKER = textwrap.dedent(
    """
    import json, os, sys, time, traceback
    sys.path.insert(0, {tests!r})
    cfg = json.loads(sys.argv[1])
    from helpers import InjectMetric, make_data, make_model
    import tracked_ckpt
    from tracked_ckpt import TrackedModelCheckpoint
    from tracked_ckpt.integrations.mlflow import MlflowTracker
    from tracked_ckpt.tracker import last_destination

    name = cfg["name"]
    x, y = make_data()
    model = make_model(name)
    if cfg["explicit"]:
        tracker = MlflowTracker(tracking_uri=cfg["uri"], experiment=cfg["experiment"], run_name=name)
    else:
        tracker = "mlflow"  # MLFLOW_TRACKING_URI + MLFLOW_EXPERIMENT_NAME, fluent run
    callback = TrackedModelCheckpoint(name + "/{{epoch}}.keras", monitor="score", mode="min", tracker=tracker,
                                      wait_timeout=120)
    open(name + ".ready", "w").close()
    deadline = time.monotonic() + 300
    while not os.path.exists("go"):  # the barrier: every worker has paid its imports
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.01)
    result = {{"name": name}}
    model.fit(x, y, epochs=len(cfg["scores"]), batch_size=8, verbose=0,
              callbacks=[InjectMetric("score", cfg["scores"]), callback])
    result["run_id"] = last_destination("mlflow")["run_id"]
    result["pending"] = [e.record.name for e in callback.last_report.pending]
    result["upload_errors"] = callback.last_report.errors
    # What a sweep job does last: offer its best to the shared registered model (scope: this run).
    try:
        promoted = tracked_ckpt.promote_best(cfg["registered"])
        result["promotion"] = {{"promoted": promoted.promoted, "version": promoted.version,
                               "epoch": promoted.checkpoint.record.epoch, "reason": promoted.reason}}
    except Exception:
        result["promotion"] = {{"error": traceback.format_exc()}}
    with open(name + ".json", "w") as f:
        json.dump(result, f)
    """
)


# -- expectations -----------------------------------------------------------------------------


def expected_is_best(scores) -> list[bool]:
    best, flags = None, []
    for value in scores:
        flags.append(value is not None and (best is None or value < best))
        if flags[-1]:
            best = value
    return flags


def expected_best_epoch(scores) -> int:
    return min((v, e) for e, v in enumerate(scores, start=1) if v is not None)[1]


GLOBAL_BEST = min(
    ((v, name, e) for name, scores in SCORES.items() for e, v in enumerate(scores, start=1) if v is not None)
)  # (0.10, "w2", 5)


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# -- the sweep --------------------------------------------------------------------------------


class Sweep:
    """The outcome of four concurrent training processes against one server."""

    def __init__(self, stack: str, url: str, root, experiment: str, registered: str):
        self.stack, self.url, self.root = stack, url, root
        self.experiment, self.registered = experiment, registered
        self.client = mlflow.MlflowClient(url)
        self.tracker = MlflowTracker(tracking_uri=url)
        self.results: dict[str, dict] = {}
        self.returncodes: dict[str, int] = {}
        self.seconds = 0.0
        self.s3 = None  # the postgres-s3 stack's MotoS3 and mlflow server directory
        self.server_root: str | None = None

    @property
    def experiment_id(self) -> str:
        return self.client.get_experiment_by_name(self.experiment).experiment_id

    def run_id(self, name: str) -> str:
        return self.results[name]["run_id"]

    def models(self, name: str | None = None):
        """LoggedModels of the sweep's experiment (of one worker's run), oldest first."""
        filter_string = f"source_run_id = '{self.run_id(name)}'" if name else None
        found = self.client.search_logged_models(
            experiment_ids=[self.experiment_id], filter_string=filter_string, max_results=1000
        )
        return sorted(found, key=lambda m: (m.source_run_id, int(m.tags["tracked_ckpt.epoch"]), m.creation_timestamp))


def run_sweep(stack: str, url: str, root) -> Sweep:
    sweep = Sweep(stack, url, root, f"concurrency-{stack}-{uuid.uuid4().hex[:8]}", f"sweep-{uuid.uuid4().hex[:8]}")
    script = root / "worker.py"
    script.write_text(WORKER.format(tests=TESTS))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(
        MLFLOW_TRACKING_URI=url,
        TRACKED_CKPT_CACHE=str(root / "cache"),
        GIT_TERMINAL_PROMPT="0",
        TF_CPP_MIN_LOG_LEVEL="3",
        KERAS_BACKEND="tensorflow",
    )
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    try:
        for name, scores in SCORES.items():
            cfg = {"name": name, "scores": scores, "explicit": EXPLICIT_TRACKER[name], "uri": url,
                   "experiment": sweep.experiment, "registered": sweep.registered}
            worker_env = dict(env)
            if not cfg["explicit"]:
                worker_env["MLFLOW_EXPERIMENT_NAME"] = sweep.experiment
            logs[name] = open(root / f"{name}.log", "wb")
            procs[name] = subprocess.Popen(
                [sys.executable, str(script), json.dumps(cfg)], cwd=root, env=worker_env,
                stdout=logs[name], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + 240
        while not all((root / f"{n}.ready").exists() for n in SCORES):
            dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
            if dead or time.monotonic() > deadline:
                raise AssertionError(f"workers not ready (exited: {dead}): {tails(root)}")
            time.sleep(0.05)
        started = time.monotonic()
        (root / "go").touch()
        for name, proc in procs.items():
            sweep.returncodes[name] = proc.wait(max(1.0, started + 300 - time.monotonic()))
        sweep.seconds = time.monotonic() - started
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for log in logs.values():
            log.close()
    for name in SCORES:
        path = root / f"{name}.json"
        if path.exists():
            sweep.results[name] = json.loads(path.read_text())
    return sweep


def tails(root) -> str:
    out = []
    for name in SCORES:
        path = root / f"{name}.log"
        if path.exists():
            out.append(f"--- {name}.log ---\n{path.read_bytes()[-1500:].decode(errors='replace')}")
    return "\n".join(out)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def production_stack(tmp_path_factory):
    """PostgreSQL + S3 (moto) + mlflow server, for the session; skipped only where it cannot exist."""
    stack = ProductionStack(str(tmp_path_factory.mktemp("production-stack")))
    try:
        stack.start()
    except StackUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"production stack unavailable on CI: {exc}")
        pytest.skip(f"production stack unavailable: {exc}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in stack.timings.items() if v is not None)
    print(f"\nproduction stack up: {timings}", file=sys.stderr)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def sqlite_sweep(mlflow_server, tmp_path_factory):
    return run_sweep("sqlite", mlflow_server.url, tmp_path_factory.mktemp("sweep-sqlite"))


@pytest.fixture(scope="module")
def postgres_s3_sweep(production_stack, tmp_path_factory):
    sweep = run_sweep("postgres-s3", production_stack.url, tmp_path_factory.mktemp("sweep-postgres-s3"))
    sweep.s3 = production_stack.s3
    sweep.server_root = production_stack.root
    return sweep


@pytest.fixture(params=["sqlite", "postgres-s3"])
def sweep(request) -> Sweep:
    done = request.getfixturevalue("sqlite_sweep" if request.param == "sqlite" else "postgres_s3_sweep")
    # Every test needs the processes to have finished cleanly; say why once, clearly.
    failed = {n: rc for n, rc in done.returncodes.items() if rc != 0}
    assert not failed and len(done.results) == len(SCORES), (
        f"[{done.stack}] workers failed {failed}, results for {sorted(done.results)}:\n{tails(done.root)}"
    )
    return done


# -- tests ------------------------------------------------------------------------------------


def test_every_run_finishes_with_nothing_left_to_upload(sweep):
    runs = sweep.client.search_runs([sweep.experiment_id], max_results=100)
    assert sorted(r.info.run_id for r in runs) == sorted(res["run_id"] for res in sweep.results.values())
    assert len(runs) == len(SCORES)  # one run per process, none shared, none extra
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    for name, result in sweep.results.items():
        assert result["pending"] == [], (name, result)
        # An emptied spool is removed: nothing waits for `tracked-ckpt sync`.
        assert not (sweep.root / name / ".tracked_ckpt").exists(), name


def test_every_checkpoint_of_every_run_is_logged_exactly_once(sweep):
    every = sweep.models()
    assert len(every) == len(SCORES) * EPOCHS, [(m.name, m.status) for m in every]
    for name, scores in SCORES.items():
        models = sweep.models(name)
        assert [int(m.tags["tracked_ckpt.epoch"]) for m in models] == list(range(1, EPOCHS + 1)), name
        assert [m.name for m in models] == [f"{name}-e{e:04d}" for e in range(1, EPOCHS + 1)]
        assert all(m.status == LoggedModelStatus.READY for m in models), [(m.name, m.status) for m in models]
        # Each is an output of its run at step=epoch (the run page's "Logged models").
        outputs = sweep.client.get_run(sweep.run_id(name)).outputs.model_outputs
        assert sorted((o.step, o.model_id) for o in outputs) == [
            (int(m.tags["tracked_ckpt.epoch"]), m.model_id) for m in models
        ]
        for epoch, model in enumerate(models, start=1):
            local = sweep.root / name / f"{epoch}.keras"  # the file Keras wrote
            assert model.tags["tracked_ckpt.sha256"] == sha256(local), model.name
            if scores[epoch - 1] is None:
                assert "tracked_ckpt.value" not in model.tags
            else:
                assert float(model.tags["tracked_ckpt.value"]) == pytest.approx(scores[epoch - 1])
            # The epoch's logs are the model's metrics (what server-side ranking orders by).
            metric_keys = {m.key for m in model.metrics or []}
            assert "loss" in metric_keys and ("score" in metric_keys) == (scores[epoch - 1] is not None)


def test_each_run_best_is_the_scripted_one(sweep):
    for name, scores in SCORES.items():
        models = sweep.models(name)
        assert [m.tags["tracked_ckpt.is_best"] for m in models] == [
            str(flag).lower() for flag in expected_is_best(scores)
        ], name
        best = tracked_ckpt.best_checkpoint(run_id=sweep.run_id(name), tracker=sweep.tracker)
        assert best.record.epoch == expected_best_epoch(scores), name
        result = tracked_ckpt.promote_best(f"{sweep.registered}-{name}", run_id=sweep.run_id(name), tracker=sweep.tracker)
        assert result.promoted and result.version == "1", result.reason
        assert result.checkpoint.record.epoch == expected_best_epoch(scores)
        assert result.checkpoint.run_id == sweep.run_id(name)


def test_concurrent_end_of_job_promotions_register_each_best_once(sweep):
    for name, result in sweep.results.items():
        promotion = result["promotion"]
        assert "error" not in promotion, f"{name}: {promotion.get('error')}"
        assert promotion["epoch"] == expected_best_epoch(SCORES[name]), (name, promotion)
    versions = sweep.client.search_model_versions(f"name = '{sweep.registered}'")
    # No checkpoint registered twice; at most one version per job; the versions jobs report exist.
    sources = [v.source for v in versions]
    assert len(sources) == len(set(sources)) <= len(SCORES), sources
    assert all(v.run_id in {r["run_id"] for r in sweep.results.values()} for v in versions)
    reported = {r["promotion"]["version"] for r in sweep.results.values() if r["promotion"]["version"]}
    assert reported <= {str(v.version) for v in versions}, reported
    # A follow-up promotion over the whole experiment leaves the sweep's best as the champion.
    tracked_ckpt.promote_best(sweep.registered, experiment=sweep.experiment, tracker=sweep.tracker)
    assert champion_of(sweep, sweep.registered) == GLOBAL_BEST[1:]


def champion_of(sweep: Sweep, registered: str) -> tuple[str, int]:
    """(worker, epoch) of the checkpoint `registered@champion` points at."""
    holder = sweep.client.get_model_version_by_alias(registered, "champion")
    model = sweep.client.get_logged_model(holder.source.removeprefix("models:/"))
    worker = next(n for n, r in sweep.results.items() if r["run_id"] == model.source_run_id)
    return worker, int(model.tags["tracked_ckpt.epoch"])


def test_the_sweeps_best_downloads_and_loads_back_verified(sweep, tmp_path):
    name = f"{sweep.registered}-load"
    result = tracked_ckpt.promote_best(name, experiment=sweep.experiment, tracker=sweep.tracker)
    value, worker, epoch = GLOBAL_BEST
    assert result.promoted and result.checkpoint.run_id == sweep.run_id(worker)
    assert result.checkpoint.record.epoch == epoch and result.checkpoint.record.value == pytest.approx(value)
    local = sweep.root / worker / f"{epoch}.keras"
    path = tracked_ckpt.download_checkpoint(name, alias="champion", tracker=sweep.tracker, cache_dir=tmp_path / "cache")
    assert sha256(path) == result.checkpoint.record.sha256 == sha256(local)
    model = tracked_ckpt.load_model(name, tracker=sweep.tracker, cache_dir=tmp_path / "cold", verify=True)
    x, _ = make_data()
    expected = keras.saving.load_model(local).predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6)


def test_postgres_s3_checkpoints_live_in_the_bucket(postgres_s3_sweep):
    sweep = postgres_s3_sweep
    assert sweep.returncodes and all(rc == 0 for rc in sweep.returncodes.values()), tails(sweep.root)
    keys = set(sweep.s3.keys(f"{ARTIFACT_PREFIX}/{sweep.experiment_id}/"))
    models = sweep.models()
    assert len(models) == len(SCORES) * EPOCHS
    for model in models:
        # Proxied artifacts: clients see mlflow-artifacts:/, the server writes to S3.
        assert model.artifact_location.startswith("mlflow-artifacts:/"), model.artifact_location
        prefix = f"{ARTIFACT_PREFIX}/{sweep.experiment_id}/models/{model.model_id}/artifacts/"
        for member in ("data/model.keras", "MLmodel"):
            assert prefix + member in keys, (model.name, member, sorted(k for k in keys if model.model_id in k))
        # The bytes in the bucket are the checkpoint Keras wrote, bit for bit.
        stored = hashlib.sha256(sweep.s3.read(prefix + "data/model.keras")).hexdigest()
        assert stored == model.tags["tracked_ckpt.sha256"], model.name
    # And nothing went to the server's local disk instead.
    assert not os.path.exists(os.path.join(sweep.server_root, "mlartifacts"))


@pytest.mark.parametrize("attach", ["fluent", "explicit"])
def test_first_use_of_an_experiment_name_survives_a_lost_creation_race(server_store, workdir, monkeypatch, attach):
    """What four jobs starting a sweep in a new experiment do: all look it up, all try to create it."""
    experiment = os.environ["MLFLOW_EXPERIMENT_NAME"] + f"-{attach}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    client = mlflow.MlflowClient(server_store)
    experiment_id = client.create_experiment(experiment)  # the job that won the race
    lookup = mlflow.MlflowClient.get_experiment_by_name
    missed = []

    def looked_up_before_the_winner_created_it(self, name):
        if name == experiment and not missed:
            missed.append(name)
            return None
        return lookup(self, name)

    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name", looked_up_before_the_winner_created_it)
    tracker = MlflowTracker(tracking_uri=server_store, experiment=experiment) if attach == "explicit" else "mlflow"
    callback = tracked_ckpt.TrackedModelCheckpoint("ckpt/{epoch}.keras", monitor="loss", tracker=tracker)
    x, y = make_data()
    make_model().fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    assert missed
    (run,) = client.search_runs([experiment_id])
    assert run.info.status == "FINISHED"
    assert len(client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")) == 2
