"""Concurrency, production-shaped: many training processes logging at once to one MLflow server.

Each stack gets one sweep (module-scoped, run once, asserted by several tests):
real training subprocesses (tests/support/sweep_trainer.py), each its own run with
scripted `score` values (so every run's best is known), started together behind
a barrier so their fits, uploads and end-of-job promotions overlap. Half of them
attach the way most users do (`MLFLOW_TRACKING_URI` + `MLFLOW_EXPERIMENT_NAME`,
fluent run), half with an explicit `MlflowTracker(tracking_uri=..., experiment=...)`.

Stacks:
* "sqlite": the session's `mlflow server` from conftest (sqlite, local proxied
  artifacts), four trainers of 5 checkpoints.
* "postgres-s3": `mlflow server` (2 workers) on a private PostgreSQL cluster with
  artifacts in an S3 bucket served by moto (tests/support/production_stack.py), sixteen
  trainers of 10 checkpoints.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import uuid

import keras
import mlflow
import numpy as np
import pytest
from mlflow.entities import LoggedModelStatus
from support.helpers import make_data, make_model, sha256
from support.production_stack import ARTIFACT_PREFIX
from support.sweep_trainer import TrainerFleet

import tracked_ckpt
from tracked_ckpt.integrations.mlflow import MlflowTracker

pytestmark = pytest.mark.slow

# One monitored metric, mode "min", for every run (so the experiment-wide best is meaningful).
# None: the metric is missing that epoch (the checkpoint is still written and logged, never best).
SCORES = {
    "w0": [0.90, 0.50, 0.70, 0.30, 0.40],  # best: epoch 4
    "w1": [0.60, 0.65, 0.20, 0.25, 0.22],  # best: epoch 3
    "w2": [0.80, None, 0.75, 0.90, 0.10],  # best: epoch 5, and the best of the sweep
    "w3": [0.35, 0.34, 0.33, 0.32, 0.31],  # every epoch a new best
}


def many_scores(trainers: int, epochs: int, seed: int = 10) -> dict[str, list[float | None]]:
    """Scripted scores for a big sweep: noisy, some epochs without the metric, one clear sweep-wide best."""
    rng = random.Random(seed)
    scores = {
        f"t{i:02d}": [None if e > 0 and rng.random() < 0.1 else round(rng.uniform(0.2, 1.0), 3) for e in range(epochs)]
        for i in range(trainers)
    }
    scores[f"t{trainers // 2:02d}"][epochs - 2] = 0.05  # the sweep's best, late in one run
    return scores


MANY_TRAINERS, MANY_EPOCHS = 16, 10
MANY_SCORES = many_scores(MANY_TRAINERS, MANY_EPOCHS)


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


def global_best(scores) -> tuple[float, str, int]:
    """(value, trainer, epoch) of the sweep's best checkpoint."""
    return min((v, name, e) for name, values in scores.items() for e, v in enumerate(values, start=1) if v is not None)


# -- the sweep --------------------------------------------------------------------------------


class Sweep:
    """The outcome of concurrent training processes against one server."""

    def __init__(self, stack: str, url: str, root, scores: dict[str, list[float | None]]):
        self.stack, self.url, self.root, self.scores = stack, url, root, scores
        self.experiment = f"concurrency-{stack}-{uuid.uuid4().hex[:8]}"
        self.registered = f"sweep-{uuid.uuid4().hex[:8]}"
        self.client = mlflow.MlflowClient(url)
        self.tracker = MlflowTracker(tracking_uri=url)
        self.results: dict[str, dict] = {}
        self.returncodes: dict[str, int] = {}
        self.seconds = 0.0
        self.tails = ""
        self.s3 = None  # the postgres-s3 stack's MotoS3 and mlflow server directory
        self.server_root: str | None = None

    @property
    def global_best(self) -> tuple[float, str, int]:
        return global_best(self.scores)

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


def run_sweep(stack: str, url: str, root, scores: dict[str, list[float | None]]) -> Sweep:
    sweep = Sweep(stack, url, root, scores)
    with TrainerFleet(root, url, sweep.experiment, scores, registered=sweep.registered) as fleet:
        fleet.start(timeout=300)
        fleet.go()
        try:
            fleet.wait(timeout=900)  # a trainer still running then is stuck: the fixture fails, naming it
        finally:
            sweep.tails = fleet.tails()
    sweep.returncodes, sweep.results, sweep.seconds = fleet.returncodes, fleet.results, fleet.seconds
    print(
        f"\n[{stack}] {len(scores)} trainers x {len(next(iter(scores.values())))} checkpoints: "
        f"{fleet.seconds:.1f}s from the barrier to the last exit",
        file=sys.stderr,
    )
    return sweep


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_sweep(mlflow_server, tmp_path_factory):
    return run_sweep("sqlite", mlflow_server.url, tmp_path_factory.mktemp("sweep-sqlite"), SCORES)


@pytest.fixture(scope="module")
def postgres_s3_sweep(production_stack, tmp_path_factory):
    sweep = run_sweep("postgres-s3", production_stack.url, tmp_path_factory.mktemp("sweep-postgres-s3"), MANY_SCORES)
    sweep.s3 = production_stack.s3
    sweep.server_root = production_stack.root
    return sweep


@pytest.fixture(params=["sqlite", "postgres-s3"])
def sweep(request) -> Sweep:
    done = request.getfixturevalue("sqlite_sweep" if request.param == "sqlite" else "postgres_s3_sweep")
    # Every test needs the processes to have finished cleanly; say why once, clearly.
    failed = {n: rc for n, rc in done.returncodes.items() if rc != 0}
    assert not failed and len(done.results) == len(done.scores), (
        f"[{done.stack}] workers failed {failed}, results for {sorted(done.results)}:\n{done.tails}"
    )
    return done


# -- tests ------------------------------------------------------------------------------------


def test_every_run_finishes_with_nothing_left_to_upload(sweep):
    runs = sweep.client.search_runs([sweep.experiment_id], max_results=100)
    assert sorted(r.info.run_id for r in runs) == sorted(res["run_id"] for res in sweep.results.values())
    assert len(runs) == len(sweep.scores)  # one run per process, none shared, none extra
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    for name, result in sweep.results.items():
        assert result["pending"] == [], (name, result)
        # An emptied spool is removed: nothing waits for `tracked-ckpt sync`.
        assert not (sweep.root / name / ".tracked_ckpt").exists(), name


def test_every_checkpoint_of_every_run_is_logged_exactly_once(sweep):
    every = sweep.models()
    assert len(every) == sum(len(s) for s in sweep.scores.values()), [(m.name, m.status) for m in every]
    for name, scores in sweep.scores.items():
        models = sweep.models(name)
        epochs = len(scores)
        assert [int(m.tags["tracked_ckpt.epoch"]) for m in models] == list(range(1, epochs + 1)), name
        assert [m.name for m in models] == [f"{name}-e{e:04d}" for e in range(1, epochs + 1)]
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
    for name, scores in sweep.scores.items():
        models = sweep.models(name)
        assert [m.tags["tracked_ckpt.is_best"] for m in models] == [
            str(flag).lower() for flag in expected_is_best(scores)
        ], name
        best = tracked_ckpt.best_checkpoint(run_id=sweep.run_id(name), tracker=sweep.tracker)
        assert best.record.epoch == expected_best_epoch(scores), name
        result = tracked_ckpt.promote_best(
            f"{sweep.registered}-{name}", run_id=sweep.run_id(name), tracker=sweep.tracker
        )
        assert result.promoted and result.version == "1", result.reason
        assert result.checkpoint.record.epoch == expected_best_epoch(scores)
        assert result.checkpoint.run_id == sweep.run_id(name)


def test_concurrent_end_of_job_promotions_register_each_best_once(sweep):
    for name, result in sweep.results.items():
        promotion = result["promotion"]
        assert "error" not in promotion, f"{name}: {promotion.get('error')}"
        assert promotion["epoch"] == expected_best_epoch(sweep.scores[name]), (name, promotion)
    versions = sweep.client.search_model_versions(f"name = '{sweep.registered}'")
    # No checkpoint registered twice; at most one version per job; the versions jobs report exist.
    sources = [v.source for v in versions]
    assert len(sources) == len(set(sources)) <= len(sweep.scores), sources
    assert all(v.run_id in {r["run_id"] for r in sweep.results.values()} for v in versions)
    reported = {r["promotion"]["version"] for r in sweep.results.values() if r["promotion"]["version"]}
    assert reported <= {str(v.version) for v in versions}, reported
    # A follow-up promotion over the whole experiment leaves the sweep's best as the champion.
    tracked_ckpt.promote_best(sweep.registered, experiment=sweep.experiment, tracker=sweep.tracker)
    assert champion_of(sweep, sweep.registered) == sweep.global_best[1:]


def champion_of(sweep: Sweep, registered: str) -> tuple[str, int]:
    """(worker, epoch) of the checkpoint `registered@champion` points at."""
    holder = sweep.client.get_model_version_by_alias(registered, "champion")
    model = sweep.client.get_logged_model(holder.source.removeprefix("models:/"))
    worker = next(n for n, r in sweep.results.items() if r["run_id"] == model.source_run_id)
    return worker, int(model.tags["tracked_ckpt.epoch"])


def test_the_sweeps_best_downloads_and_loads_back_verified(sweep, tmp_path):
    name = f"{sweep.registered}-load"
    result = tracked_ckpt.promote_best(name, experiment=sweep.experiment, tracker=sweep.tracker)
    value, worker, epoch = sweep.global_best
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
    assert sweep.returncodes and all(rc == 0 for rc in sweep.returncodes.values()), sweep.tails
    keys = set(sweep.s3.keys(f"{ARTIFACT_PREFIX}/{sweep.experiment_id}/"))
    models = sweep.models()
    assert len(models) == sum(len(s) for s in sweep.scores.values())
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


class _ResentCreate(keras.callbacks.Callback):
    """Before the checkpoint callback ends the run: leave what a create applied twice leaves.

    An overloaded server's worker killed mid-request (uvicorn's health check) loses the
    response of a create it applied; MLflow's HTTP session resends the POST, so the run
    gets a second LoggedModel with the same tags that nobody ever completes.
    """

    def __init__(self):
        super().__init__()
        self.checkpoint: tracked_ckpt.TrackedModelCheckpoint | None = None
        self.twin = None

    def on_train_end(self, logs=None):
        destination = self.checkpoint.session.destinations["mlflow"]  # the fit's run
        client = mlflow.MlflowClient(destination["tracking_uri"])
        logged = client.search_logged_models(
            [destination["experiment_id"]], filter_string=f"source_run_id = '{destination['run_id']}'"
        )
        model = max(logged, key=lambda m: int(m.tags["tracked_ckpt.epoch"]))
        self.twin = client.create_logged_model(
            experiment_id=destination["experiment_id"],
            name=model.name,
            source_run_id=destination["run_id"],
            tags=model.tags,
        )


def test_an_unfinished_duplicate_of_a_logged_checkpoint_is_dropped_when_the_run_ends(server_store, workdir):
    resent = _ResentCreate()
    callback = tracked_ckpt.TrackedModelCheckpoint(
        "ckpt/{epoch}.keras", monitor="loss", tracker=MlflowTracker(tracking_uri=server_store), upload="sync"
    )
    resent.checkpoint = callback
    x, y = make_data()
    make_model().fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[resent, callback])
    client = mlflow.MlflowClient(server_store)
    run_id = resent.twin.source_run_id
    models = client.search_logged_models([resent.twin.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert sorted((m.name, m.status) for m in models) == [
        ("tiny-e0001", LoggedModelStatus.READY),
        ("tiny-e0002", LoggedModelStatus.READY),
    ]
    assert resent.twin.model_id not in {m.model_id for m in models}
    assert client.get_run(run_id).info.status == "FINISHED"
