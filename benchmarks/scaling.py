"""Scaling figures for tracked-ckpt against a real local MLflow server.

* `promote_best` over a run of 10 and of 1,000 checkpoints: MlflowClient calls
  (outermost public-method calls, counted by wrapping the class's methods),
  HTTP requests (counted on `requests.Session.send`) and wall time.
* warm `tracked_ckpt.load_model` against `keras.saving.load_model` on the same file.
* peak memory of the callback while a checkpoint is hashed and uploaded in the
  background (RSS sampled every 2 ms in a thread of the training process, plus
  tracemalloc's peak of Python allocations in the same window).

The checkpoints of the big run are real LoggedModels made by
`MlflowTracker.log_checkpoint` (the publisher's own call): the tags of the
schema, the epoch's metrics linked to the model, the run output, status READY.
Their records are distinct (epoch, step, value, metrics); they describe one
small `.keras` file, so the sha256 is real. To build 1,000 within the time
budget, the artifact upload inside `log_checkpoint` is stubbed out unless
`--artifacts` (promote_best never reads artifacts), and 4 threads log in
parallel.

Run alone: `.venv/bin/python benchmarks/scaling.py [--n 1000] [--sizes 10MB,60MB,250MB]`.
`benchmarks/run.py` calls `run_scaling` and puts the figures in RESULTS.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import logging

from common import OUT, MlflowServer, build_model, median, rss_bytes, tiny_data

logging.getLogger("tensorflow").setLevel(logging.ERROR)

import keras  # noqa: E402
import requests  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

import tracked_ckpt  # noqa: E402
from tracked_ckpt import TrackedModelCheckpoint  # noqa: E402
from tracked_ckpt.files import sha256_file  # noqa: E402
from tracked_ckpt.integrations.mlflow import MlflowTracker  # noqa: E402
from tracked_ckpt.record import CheckpointRecord  # noqa: E402

# -- counting MlflowClient calls and HTTP requests ------------------------------------------------


class CallCounter:
    """Counts outermost public `MlflowClient` method calls and every HTTP request, while enabled."""

    def __init__(self):
        self.enabled = False
        self.client_calls: dict[str, int] = {}
        self.http = 0
        self._local = threading.local()
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        for name in dir(MlflowClient):
            if name.startswith("_"):
                continue
            attr = getattr(MlflowClient, name)
            if not callable(attr) or isinstance(attr, type):
                continue
            setattr(MlflowClient, name, self._wrap(name, attr))
        original_send = requests.Session.send
        counter = self

        @functools.wraps(original_send)
        def send(session, request, **kwargs):
            if counter.enabled:
                counter.http += 1
            return original_send(session, request, **kwargs)

        requests.Session.send = send

    def _wrap(self, name, method):
        counter = self

        @functools.wraps(method)
        def wrapped(*args, **kwargs):
            depth = getattr(counter._local, "depth", 0)
            if counter.enabled and depth == 0:
                counter.client_calls[name] = counter.client_calls.get(name, 0) + 1
            counter._local.depth = depth + 1
            try:
                return method(*args, **kwargs)
            finally:
                counter._local.depth = depth

        return wrapped

    def reset(self) -> None:
        self.client_calls = {}
        self.http = 0

    @property
    def total_client_calls(self) -> int:
        return sum(self.client_calls.values())


COUNTER = CallCounter()


# -- fixtures ----------------------------------------------------------------------------------------


def _small_checkpoint(directory: str) -> str:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)], name="scale")
    model.compile(optimizer="adam", loss="mse")
    path = os.path.join(directory, "scale.keras")
    model.save(path)
    return path


def _record(path: str, sha: str, size: int, index: int, rng: random.Random) -> CheckpointRecord:
    val_loss = 1.0 / (1 + index) + rng.random() * 0.05  # noisy, trending down: the best is near the end
    loss = val_loss * 0.9
    return CheckpointRecord(
        name=f"scale-e{index + 1:04d}",
        epoch=index + 1,
        step=(index + 1) * 10,
        monitor="val_loss",
        mode="min",
        is_best=False,
        sha256=sha,
        size_bytes=size,
        format="keras",
        filepath=os.path.abspath(path),
        keras_version=keras.__version__,
        backend=keras.backend.backend(),
        value=val_loss,
        metrics={"loss": loss, "val_loss": val_loss},
    )


class _NoArtifactUpload:
    """Within the block, `MlflowClient.log_model_artifacts` uploads nothing (fixture building only)."""

    def __enter__(self):
        self.original = MlflowClient.log_model_artifacts
        MlflowClient.log_model_artifacts = lambda client, model_id, local_dir: None

    def __exit__(self, *exc):
        MlflowClient.log_model_artifacts = self.original


def log_many(
    tracker: MlflowTracker, destination: dict, path: str, n: int, workers: int = 4, artifacts: bool = False
) -> dict:
    """Log `n` distinct records of one file as LoggedModels of one run; return timing figures.

    Each goes through `MlflowTracker.log_checkpoint` (idempotency search, LoggedModel with the
    schema tags, model-linked metrics, run output, finalize to READY). Unless `artifacts`, the
    artifact upload inside it (7 small PUTs) is stubbed out: promote_best never reads artifacts,
    and it makes building a 1,000-checkpoint run ~2.5x faster on this machine.
    """
    if not artifacts:
        with _NoArtifactUpload():
            return log_many(tracker, destination, path, n, workers, artifacts=True) | {"artifacts": False}
    sha, size = sha256_file(path)
    rng = random.Random(n)
    records = [_record(path, sha, size, i, rng) for i in range(n)]
    durations: list[float] = [0.0] * n

    def one(i: int) -> str:
        t = time.perf_counter()
        ref = tracker.log_checkpoint(records[i], path, destination)
        durations[i] = time.perf_counter() - t
        return ref

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        refs = list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - started
    first = durations[: max(1, n // 10)]
    last = durations[-max(1, n // 10) :]
    return {
        "n": n,
        "elapsed_s": elapsed,
        "per_checkpoint_median_ms": 1000 * median(durations),
        "first_tenth_median_ms": 1000 * median(first),
        "last_tenth_median_ms": 1000 * median(last),
        "distinct_ids": len(set(refs)),
        "best_val_loss": min(r.value for r in records),
        "best_name": min(records, key=lambda r: r.value).name,
        "artifacts": True,
    }


def measure_promote(tracker: MlflowTracker, registered_name: str, run_id: str, repeats: int = 3) -> dict:
    """promote_best on one run: first call (registers), then repeat calls (alias already there)."""
    calls = []
    for _ in range(1 + repeats):
        COUNTER.reset()
        COUNTER.enabled = True
        t = time.perf_counter()
        result = tracked_ckpt.promote_best(registered_name, tracker=tracker, run_id=run_id)
        elapsed = time.perf_counter() - t
        COUNTER.enabled = False
        calls.append(
            {
                "seconds": elapsed,
                "client_calls": COUNTER.total_client_calls,
                "by_method": dict(sorted(COUNTER.client_calls.items())),
                "http_requests": COUNTER.http,
                "promoted": result.promoted,
                "checkpoint": result.checkpoint.record.name if result.checkpoint else None,
                "version": result.version,
            }
        )
    repeat = calls[1:]
    return {
        "first": calls[0],
        "repeat_median_s": median([c["seconds"] for c in repeat]),
        "repeat_client_calls": repeat[0]["client_calls"],
        "repeat_http_requests": repeat[0]["http_requests"],
        "repeat_by_method": repeat[0]["by_method"],
    }


# -- memory of the callback during a background upload ------------------------------------------------


class RssSampler:
    """Samples this process's RSS every `interval` seconds; keeps the peak inside marked windows."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.windows: list[dict] = []
        self._active: dict | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes()
            with self._lock:
                if self._active is not None:
                    self._active["peak"] = max(self._active["peak"], rss)
                    self._active["samples"] += 1
            time.sleep(self.interval)

    def open(self) -> None:
        rss = rss_bytes()
        with self._lock:
            self._active = {"baseline": rss, "peak": rss, "samples": 0, "start": time.perf_counter()}

    def close(self) -> dict:
        rss = rss_bytes()
        with self._lock:
            window, self._active = self._active, None
        window["peak"] = max(window["peak"], rss)
        window["seconds"] = time.perf_counter() - window.pop("start")
        self.windows.append(window)
        return window


def measure_upload_memory(size: str, tracker: MlflowTracker, workdir: str) -> dict:
    """Fit one epoch with TrackedModelCheckpoint (async); measure memory while the publisher works.

    The window is the tracker's `log_checkpoint` on the upload thread (a subclass passed
    as `tracker=`; sha256 reads 1 MiB chunks just before it): building the MLflow model
    directory, the HTTP uploads, metrics, finalize. With one
    epoch the training thread is only waiting in `on_train_end` meanwhile, so what grows
    is the callback's (and MLflow client's) memory. Returns the run id and figures.
    """
    model = build_model(size, name=f"mem{size.lower()}")
    x, y = tiny_data()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)  # trace the train function first
    ckpt_dir = os.path.join(workdir, f"mem-{size}")
    figures: dict = {}

    with RssSampler() as sampler:

        class Measured(type(tracker)):
            def log_checkpoint(self, record, path, destination, **kwargs):
                tracemalloc.start()
                sampler.open()
                t = time.perf_counter()
                try:
                    return super().log_checkpoint(record, path, destination, **kwargs)
                finally:
                    figures["publish_seconds"] = time.perf_counter() - t
                    window = sampler.close()
                    _, peak = tracemalloc.get_traced_memory()
                    tracemalloc.stop()
                    figures["rss_baseline_mb"] = window["baseline"] / 2**20
                    figures["rss_peak_above_baseline_mb"] = (window["peak"] - window["baseline"]) / 2**20
                    figures["rss_samples"] = window["samples"]
                    figures["tracemalloc_peak_mb"] = peak / 2**20

        measured = Measured.__new__(Measured)
        measured.__dict__.update(tracker.__dict__)  # the same configured tracker, its calls measured
        callback = TrackedModelCheckpoint(
            os.path.join(ckpt_dir, "ckpt-{epoch:02d}.keras"),
            monitor="val_loss",
            tracker=measured,
            upload="async",
        )
        model.fit(x, y, validation_data=(x[:16], y[:16]), epochs=1, batch_size=32, verbose=0, callbacks=[callback])
    report = callback.last_report
    if report is None or not report.ok or not report.logged:
        raise RuntimeError(f"upload did not complete: {report}")
    figures["file_mb"] = report.logged[0][0].record.size_bytes / 1e6
    figures["run_id"] = callback.session.destinations["mlflow"]["run_id"]
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return figures


def measure_load(tracker: MlflowTracker, registered_name: str, run_id: str, cache_dir: str, repeats: int) -> dict:
    """Promote the run's checkpoint, then time warm `load_model` against `keras.saving.load_model`.

    Paired: each round times both (alternating which goes first); the loaded models are
    released outside the timed region, and the garbage collector runs between rounds.
    """
    import gc

    tracked_ckpt.promote_best(registered_name, tracker=tracker, run_id=run_id)
    t = time.perf_counter()
    model = tracked_ckpt.load_model(registered_name, alias="champion", tracker=tracker, cache_dir=cache_dir)
    cold = time.perf_counter() - t
    del model
    checkpoint = tracker.resolve(registered_name, alias="champion", version=None)
    path = tracked_ckpt.download_checkpoint(checkpoint=checkpoint, tracker=tracker, cache_dir=cache_dir)
    keras.saving.load_model(path)  # warm Keras's own first-use costs too
    warm, plain, resolve = [], [], []
    for i in range(repeats):
        order = ("tracked", "keras") if i % 2 == 0 else ("keras", "tracked")
        for which in order:
            gc.collect()
            t = time.perf_counter()
            if which == "tracked":
                model = tracked_ckpt.load_model(registered_name, alias="champion", tracker=tracker, cache_dir=cache_dir)
                warm.append(time.perf_counter() - t)
            else:
                model = keras.saving.load_model(path)
                plain.append(time.perf_counter() - t)
            del model
        t = time.perf_counter()
        tracker.resolve(registered_name, alias="champion", version=None)
        resolve.append(time.perf_counter() - t)
    COUNTER.reset()
    COUNTER.enabled = True
    model = tracked_ckpt.load_model(registered_name, alias="champion", tracker=tracker, cache_dir=cache_dir)
    COUNTER.enabled = False
    del model
    return {
        "file_mb": os.path.getsize(path) / 1e6,
        "repeats": repeats,
        "cold_s": cold,
        "warm_median_s": median(warm),
        "warm_min_s": min(warm),
        "warm_max_s": max(warm),
        "keras_median_s": median(plain),
        "keras_min_s": min(plain),
        "keras_max_s": max(plain),
        "ratio": median(warm) / median(plain),
        "paired_overhead_median_s": median([w - p for w, p in zip(warm, plain, strict=False)]),
        "resolve_median_s": median(resolve),
        "warm_http_requests": COUNTER.http,
        "warm_client_calls": COUNTER.total_client_calls,
    }


# -- entry point --------------------------------------------------------------------------------------


def run_scaling(
    server_url: str,
    workdir: str,
    n_big: int = 1000,
    n_small: int = 10,
    sizes: tuple[str, ...] = ("10MB", "60MB", "250MB"),
    load_repeats: int = 9,
    artifacts: bool = False,
    log=print,
) -> dict:
    COUNTER.install()
    os.makedirs(workdir, exist_ok=True)
    client = MlflowClient(server_url)
    experiment_id = client.create_experiment(f"scaling-{int(time.time() * 1000)}")
    tracker = MlflowTracker(tracking_uri=server_url)
    path = _small_checkpoint(workdir)
    results: dict = {"n_small": n_small, "n_big": n_big}

    for n in (n_small, n_big):
        run = client.create_run(experiment_id, run_name=f"checkpoints-{n}")
        destination = {"tracking_uri": server_url, "experiment_id": experiment_id, "run_id": run.info.run_id}
        log(f"  logging {n} checkpoints ...")
        results[f"log_{n}"] = log_many(tracker, destination, path, n, artifacts=artifacts)
        client.set_terminated(run.info.run_id)
        log(f"  promote_best over {n} checkpoints ...")
        results[f"promote_{n}"] = measure_promote(tracker, f"scaling-{n}-{experiment_id}", run.info.run_id)
        results[f"promote_{n}"]["expected_best"] = results[f"log_{n}"]["best_name"]

    results["memory"] = {}
    results["load"] = {}
    for size in sizes:
        log(f"  upload memory and load_model at {size} ...")
        memory = measure_upload_memory(size, tracker, workdir)
        results["memory"][size] = memory
        results["load"][size] = measure_load(
            tracker,
            f"load-{size}-{experiment_id}",
            memory["run_id"],
            os.path.join(workdir, "cache"),
            load_repeats if size != "10MB" else 2 * load_repeats + 1,
        )
        shutil.rmtree(os.path.join(workdir, "cache"), ignore_errors=True)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="checkpoints in the big run (default 1000)")
    parser.add_argument("--sizes", default="10MB,60MB,250MB")
    parser.add_argument("--load-repeats", type=int, default=9)
    parser.add_argument(
        "--artifacts",
        action="store_true",
        help="upload each fixture checkpoint's artifacts too (slower; promote_best does not read them)",
    )
    args = parser.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="scaling-", dir=OUT)
    os.chdir(workdir)
    with MlflowServer(os.path.join(workdir, "server")) as server:
        results = run_scaling(
            server.url,
            workdir,
            n_big=args.n,
            sizes=tuple(args.sizes.split(",")),
            load_repeats=args.load_repeats,
            artifacts=args.artifacts,
        )
    print(json.dumps(results, indent=1, default=str))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
