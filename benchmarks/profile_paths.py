"""Profiles behind the verdicts in RESULTS.md (the "why" of each miss), against a real local MLflow server.

1. `callback`: where the training thread's time goes in TrackedModelCheckpoint per
   checkpoint (release_path, record, stage, manifest, submit), with the real
   MLflow tracker uploading in the background and with a tracker that only
   sleeps (no background CPU), to separate the callback's own work from CPU/GIL
   contention with the upload.
2. `requests`: every HTTP request one `MlflowTracker.log_checkpoint` makes, with
   its time, for a small and a large checkpoint, and the server's CPU per upload.
3. `load`: warm `tracked_ckpt.load_model` split into resolve (HTTP) / cache check /
   Keras load, and the same with the proposed one-request resolve (patched in
   here only, for measurement).
4. `nice`: fit time at a size with the publisher thread at normal priority,
   reniced to 10, and with `log_checkpoint` run in a helper process (plain and
   reniced): prototypes of possible fixes, patched in here only.
5. `end`: `on_train_end` when nothing is left to upload, with the current
   end-of-fit wait (0.1 s sleep steps) and the proposed one (join the worker).

Usage: .venv/bin/python benchmarks/profile_paths.py [callback|requests|load|nice|end ...] [--size 60MB]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

import logging

import keras
import mlflow
import requests
from common import OUT, MlflowServer, build_model, cpu_snapshot, median, other_cpu_between, tiny_data

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt import callback as callback_module
from tracked_ckpt import publisher as publisher_module
from tracked_ckpt.files import sha256_file
from tracked_ckpt.integrations.mlflow import MlflowTracker
from tracked_ckpt.integrations.mlflow_store import model_id_from_source
from tracked_ckpt.record import TAG_PREFIX, CheckpointRecord
from tracked_ckpt.registry import LoggedCheckpoint
from tracked_ckpt.settings import UPLOAD_NICENESS as UPLOAD_NICENESS_ENV

logging.getLogger("mlflow").setLevel(logging.ERROR)
logging.getLogger("tracked_ckpt").setLevel(logging.ERROR)


def data():
    x, y = tiny_data(64, 0)
    xv, yv = tiny_data(16, 1)
    return x, y, xv, yv


class SleepTracker(MlflowTracker):
    """Logs nothing: sleeps as long as the real upload took (no CPU), to isolate contention."""

    def __init__(self, seconds: float):
        super().__init__(tracking_uri="sqlite:///unused.db")
        self.seconds = seconds

    def start(self, **kwargs):
        return {"tracking_uri": "none", "experiment_id": "0", "run_id": "sleep"}

    def log_checkpoint(self, record, path, destination, first_attempt=False):
        time.sleep(self.seconds)
        return "sleep"

    def finish(self, success=True, **kwargs):
        pass


# -- 1. callback -------------------------------------------------------------------------------------


def profile_callback(server: MlflowServer, size: str, epochs: int = 4, repeats: int = 3) -> None:
    parts: dict[str, list[float]] = {}

    def timed(owner, name, key):
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                return original(*args, **kwargs)
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                parts.setdefault(key, []).append(time.perf_counter() - t)

        setattr(owner, name, wrapper)
        return original

    cls = TrackedModelCheckpoint
    originals = [
        (callback_module, "release_path", timed(callback_module, "release_path", "release_path (stat)")),
        (cls, "_make_record", timed(cls, "_make_record", "_make_record")),
        (callback_module.Spool, "stage", timed(callback_module.Spool, "stage", "spool.stage (hard link)")),
        (callback_module.Spool, "write", timed(callback_module.Spool, "write", "spool.write (manifest JSON)")),
        (callback_module.Publisher, "submit", timed(callback_module.Publisher, "submit", "publisher.submit")),
        (keras.Model, "save", timed(keras.Model, "save", "keras Model.save")),
        (cls, "_on_saved", timed(cls, "_on_saved", "_on_saved total")),
        (cls, "on_epoch_end", timed(cls, "on_epoch_end", "on_epoch_end total")),
    ]
    model = build_model(size)
    x, y, xv, yv = data()
    model.fit(x, y, epochs=1, verbose=0)
    upload_time = None
    try:
        for label in ("real MLflow upload in background", "sleeping tracker (no background CPU)"):
            summary: dict[str, list[float]] = {}
            for _ in range(repeats):
                parts.clear()
                workdir = tempfile.mkdtemp(dir=OUT)
                if label.startswith("real"):
                    tracker = MlflowTracker(tracking_uri=server.url, experiment="profile")
                else:
                    tracker = SleepTracker(upload_time or 0.5)
                cb = TrackedModelCheckpoint(os.path.join(workdir, "c-{epoch:02d}.keras"), tracker=tracker)
                t = time.perf_counter()
                model.fit(x, y, validation_data=(xv, yv), epochs=epochs, verbose=0, callbacks=[cb])
                if label.startswith("real") and cb.last_report is not None:
                    upload_time = (time.perf_counter() - t) / epochs
                for key, values in parts.items():
                    summary.setdefault(key, []).append(sum(values) / epochs)
                shutil.rmtree(workdir, ignore_errors=True)
            print(f"\n[callback] {size}, {label}: training-thread ms per checkpoint (median of {repeats} fits)")
            save = median(summary.get("keras Model.save", [0]))
            for key, values in summary.items():
                print(f"  {key:34s} {1000 * median(values):8.2f} ms")
            extra = median(summary["on_epoch_end total"]) - save
            print(f"  {'=> on_epoch_end - save':34s} {1000 * extra:8.2f} ms ({100 * extra / save:.1f}% of save)")
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


# -- 2. requests -------------------------------------------------------------------------------------


def profile_requests(server: MlflowServer, sizes: list[str]) -> None:
    log: list[tuple[str, str, float, int]] = []
    original_send = requests.Session.send

    def send(session, request, **kwargs):
        t = time.perf_counter()
        try:
            return original_send(session, request, **kwargs)
        finally:
            body = request.body
            size = (
                len(body)
                if isinstance(body, (bytes, str))
                else (os.fstat(body.fileno()).st_size if hasattr(body, "fileno") else 0)
            )
            log.append((request.method, request.path_url.split("?")[0], time.perf_counter() - t, size))

    requests.Session.send = send
    try:
        tracker = MlflowTracker(tracking_uri=server.url, experiment="profile-requests")
        destination = tracker.start()
        workdir = tempfile.mkdtemp(dir=OUT)
        for size in sizes:
            model = build_model(size)
            x, y, _, _ = data()
            model.fit(x, y, epochs=1, verbose=0)  # builds Adam's slots, as in a real checkpoint
            path = os.path.join(workdir, f"{size}.keras")
            model.save(path)
            sha, nbytes = sha256_file(path)
            for attempt in range(2):
                record = CheckpointRecord(
                    name=f"p-e{attempt + 1:04d}",
                    epoch=attempt + 1,
                    step=attempt + 1,
                    monitor="val_loss",
                    mode="min",
                    is_best=True,
                    sha256=sha,
                    size_bytes=nbytes,
                    format="keras",
                    filepath=path,
                    keras_version=keras.__version__,
                    backend="tensorflow",
                    value=0.5,
                    metrics={"val_loss": 0.5},
                )
                log.clear()
                s0 = cpu_snapshot(server.proc.pid)
                t = time.perf_counter()
                tracker.log_checkpoint(record, path, destination)
                elapsed = time.perf_counter() - t
                s1 = cpu_snapshot(server.proc.pid)
            t = time.perf_counter()
            sha256_file(path)
            hash_s = time.perf_counter() - t
            print(
                f"\n[requests] log_checkpoint of a {nbytes / 1e6:.1f} MB .keras: {elapsed * 1000:.0f} ms, "
                f"{len(log)} HTTP requests, server CPU {1000 * (s1['server'] - s0['server']):.0f} ms "
                f"(sha256 before it, on the publisher thread: {hash_s * 1000:.0f} ms)"
            )
            for method, path_url, seconds, body in log:
                print(f"  {method:5s} {path_url[:90]:90s} {seconds * 1000:7.1f} ms  {body / 1e6:8.2f} MB")
        shutil.rmtree(workdir, ignore_errors=True)
        tracker.finish()
    finally:
        requests.Session.send = original_send


# -- 3. load ------------------------------------------------------------------------------------------


def resolve_from_version_tags(self, registered_name, *, alias, version):
    """The proposed `MlflowTracker.resolve`: one request; the record comes from the version's tags."""
    client = self.client(self.tracking_uri or mlflow.get_tracking_uri())
    mv = (
        client.get_model_version_by_alias(registered_name, alias)
        if alias is not None
        else client.get_model_version(registered_name, str(version))
    )
    model_id = model_id_from_source(mv.source)
    tags = mv.tags or {}
    if model_id is None or TAG_PREFIX + "sha256" not in tags:
        return PROPOSED_FALLBACK(self, registered_name, alias=alias, version=version)
    metadata = {k[len(TAG_PREFIX) :]: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}
    name = metadata.pop("name", "")
    record = CheckpointRecord.from_metadata(metadata, name=name)
    return LoggedCheckpoint(
        id=model_id,
        run_id=mv.run_id or "",
        record=record,
        tracker=self.name,
        location="",
        aliases=tuple(mv.aliases or ()),
        extra={"tracking_uri": client.tracking_uri, "version": str(mv.version), "registered_name": mv.name},
    )


PROPOSED_FALLBACK = MlflowTracker.resolve


def profile_load(server: MlflowServer, size: str, repeats: int = 9) -> None:
    workdir = tempfile.mkdtemp(dir=OUT)
    tracker = MlflowTracker(tracking_uri=server.url, experiment="profile-load")
    model = build_model(size)
    x, y, xv, yv = data()
    cb = TrackedModelCheckpoint(os.path.join(workdir, "c-{epoch:02d}.keras"), tracker=tracker)
    model.fit(x, y, validation_data=(xv, yv), epochs=1, verbose=0, callbacks=[cb])
    run_id = cb.session.destinations["mlflow"]["run_id"]
    name = f"profile-load-{size}-{int(time.time())}"
    tracked_ckpt.promote_best(name, tracker=tracker, run_id=run_id)
    cache = os.path.join(workdir, "cache")
    tracked_ckpt.load_model(name, tracker=tracker, cache_dir=cache)
    checkpoint = tracker.resolve(name, alias="champion", version=None)
    path = tracked_ckpt.download_checkpoint(checkpoint=checkpoint, tracker=tracker, cache_dir=cache)
    figures: dict[str, list[float]] = {}
    for i in range(repeats):
        for which in ("current", "proposed", "keras") if i % 2 else ("keras", "proposed", "current"):
            if which == "keras":
                t = time.perf_counter()
                keras.saving.load_model(path)
                figures.setdefault("keras.saving.load_model", []).append(time.perf_counter() - t)
                continue
            MlflowTracker.resolve = resolve_from_version_tags if which == "proposed" else PROPOSED_FALLBACK
            try:
                t = time.perf_counter()
                tracker.resolve(name, alias="champion", version=None)
                figures.setdefault(f"resolve ({which})", []).append(time.perf_counter() - t)
                t = time.perf_counter()
                tracked_ckpt.load_model(name, tracker=tracker, cache_dir=cache)
                figures.setdefault(f"load_model warm ({which})", []).append(time.perf_counter() - t)
            finally:
                MlflowTracker.resolve = PROPOSED_FALLBACK
    print(f"\n[load] {size}: medians of {repeats}")
    base = median(figures["keras.saving.load_model"])
    for key, values in figures.items():
        print(f"  {key:38s} {1000 * median(values):8.1f} ms   ({median(values) / base:.2f}x keras load)")
    shutil.rmtree(workdir, ignore_errors=True)


# -- 4. nice ------------------------------------------------------------------------------------------


def _child_init(niceness: int) -> None:
    if niceness:
        os.nice(niceness)
    logging.getLogger("mlflow").setLevel(logging.ERROR)


def _child_log(tracking_uri: str, record, path: str, destination: dict) -> str:
    tracker = _CHILD_TRACKERS.get(tracking_uri)
    if tracker is None:
        tracker = _CHILD_TRACKERS[tracking_uri] = MlflowTracker(tracking_uri=tracking_uri)
    return tracker.log_checkpoint(record, path, destination)


_CHILD_TRACKERS: dict[str, MlflowTracker] = {}


class ProcessTracker(MlflowTracker):
    """Prototype of the proposed fix: `log_checkpoint` runs in a helper process (no GIL shared with training)."""

    def __init__(self, tracking_uri: str, niceness: int = 0, **kwargs):
        super().__init__(tracking_uri=tracking_uri, **kwargs)
        import concurrent.futures
        import multiprocessing

        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init,
            initargs=(niceness,),
        )
        self.pool.submit(os.getpid).result()  # start (and import) before the timed fit

    def log_checkpoint(self, record, path, destination, first_attempt=False):
        return self.pool.submit(_child_log, destination["tracking_uri"], record, path, dict(destination)).result()


def profile_nice(server: MlflowServer, size: str, epochs: int = 4, repeats: int = 5) -> None:
    process_tracker = ProcessTracker(server.url, experiment="profile-nice")
    process_tracker_niced = ProcessTracker(server.url, niceness=10, experiment="profile-nice")

    model = build_model(size)
    x, y, xv, yv = data()
    model.fit(x, y, epochs=1, verbose=0)
    results: dict[str, list[tuple[float, float]]] = {}
    for _ in range(repeats):
        for variant in (
            "keras",
            "normal priority",
            "publisher niced to 10",
            "upload in helper process",
            "helper process niced to 10",
        ):
            workdir = tempfile.mkdtemp(dir=OUT)
            marker = _Marker()
            if variant == "keras":
                cb = keras.callbacks.ModelCheckpoint(os.path.join(workdir, "c-{epoch:02d}.keras"))
            else:
                tracker = {
                    "upload in helper process": process_tracker,
                    "helper process niced to 10": process_tracker_niced,
                }.get(variant) or MlflowTracker(tracking_uri=server.url, experiment="profile-nice")
                cb = TrackedModelCheckpoint(os.path.join(workdir, "c-{epoch:02d}.keras"), tracker=tracker)
            # The publisher lowers its own priority (TRACKED_CKPT_UPLOAD_NICENESS); 0 keeps it normal.
            os.environ[UPLOAD_NICENESS_ENV] = "10" if variant.startswith("publisher niced") else "0"
            try:
                snap = cpu_snapshot(server.proc.pid)
                t = time.perf_counter()
                model.fit(x, y, validation_data=(xv, yv), epochs=epochs, verbose=0, callbacks=[cb, marker])
                elapsed = time.perf_counter() - t
                other = other_cpu_between(snap, cpu_snapshot(server.proc.pid))
                results.setdefault(variant, []).append((elapsed, marker.t - t, other))
            finally:
                os.environ.pop(UPLOAD_NICENESS_ENV, None)
            shutil.rmtree(workdir, ignore_errors=True)
            os.sync()
    process_tracker.pool.shutdown()
    process_tracker_niced.pool.shutdown()
    print(f"\n[nice] {size}, {epochs} epochs, medians of {repeats}: fit s / to end of last epoch s")
    base = median([r[0] for r in results["keras"]])
    base_epoch = median([r[1] for r in results["keras"]])
    for variant, values in results.items():
        fit, epoch = median([v[0] for v in values]), median([v[1] for v in values])
        print(
            f"  {variant:28s} {fit:6.2f} s ({fit / base:.2f}x)   {epoch:6.2f} s ({epoch / base_epoch:.2f}x)   "
            f"runs: " + ", ".join(f"{v[0]:.1f}/{v[1]:.1f} (other CPU {v[2]:.1f})" for v in values)
        )


# -- 5. end --------------------------------------------------------------------------------------------


def _wait_with_progress_join(description, pending, alive, deadline, size_of, _threads=None):
    """The proposed wait: join the worker (returns as soon as it ends) instead of sleeping 0.1 s steps."""
    from tracked_ckpt.progress import Progress

    items = pending()
    total = sum(size_of(e) for e in items)
    thread = next((t for t in threading.enumerate() if t.name == "tracked-ckpt-publisher" and t.is_alive()), None)
    with Progress(description, total, len(items)) as bar:
        left_bytes, left_items = total, len(items)
        while alive() and (deadline is None or time.monotonic() < deadline):
            step = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
            if thread is not None:
                thread.join(step)
            else:
                time.sleep(step)
            now = pending()
            now_bytes = sum(size_of(e) for e in now)
            bar.advance(max(0, left_bytes - now_bytes), max(0, left_items - len(now)))
            left_bytes, left_items = now_bytes, len(now)


def profile_end(server: MlflowServer, repeats: int = 7) -> None:
    """on_train_end when the upload queue is already empty (or nearly): the cost of the end-of-fit wait itself."""
    original = publisher_module.wait_with_progress
    model = build_model("10MB")
    x, y, _xv, _yv = data()
    model.fit(x, y, epochs=1, verbose=0)
    figures: dict[str, list[float]] = {}
    for _ in range(repeats):
        for variant in ("current (sleep 0.1 s steps)", "proposed (join the worker)"):
            publisher_module.wait_with_progress = (
                original if variant.startswith("current") else _wait_with_progress_join
            )
            workdir = tempfile.mkdtemp(dir=OUT)
            try:
                cb = TrackedModelCheckpoint(
                    os.path.join(workdir, "c-{epoch:02d}.keras"), tracker=SleepTracker(0.0), log_git=False
                )
                original_end = cb.on_train_end

                def timed_end(logs=None, _original=original_end, _variant=variant):
                    t = time.perf_counter()
                    _original(logs)
                    figures.setdefault(_variant, []).append(time.perf_counter() - t)

                cb.on_train_end = timed_end
                time.sleep(0.2)
                model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
            finally:
                publisher_module.wait_with_progress = original
                shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n[end] on_train_end of an async TrackedModelCheckpoint whose tracker returns at once (median of {repeats}):"
    )
    for variant, values in figures.items():
        print(
            f"  {variant:30s} {1000 * median(values):7.1f} ms  "
            f"(min {1000 * min(values):.1f}, max {1000 * max(values):.1f})"
        )


class _Marker(keras.callbacks.Callback):
    t = 0.0

    def on_epoch_end(self, epoch, logs=None):
        self.t = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="*", default=["callback", "requests", "load", "nice", "end"])
    parser.add_argument("--size", default="60MB")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="profile-", dir=OUT)
    os.chdir(workdir)
    with MlflowServer(os.path.join(workdir, "server")) as server:
        if "callback" in args.what:
            for size in ("10MB", args.size):
                profile_callback(server, size)
        if "requests" in args.what:
            profile_requests(server, ["10MB", "250MB"])
        if "load" in args.what:
            for size in ("10MB", args.size):
                profile_load(server, size)
        if "nice" in args.what:
            profile_nice(server, args.size)
        if "end" in args.what:
            profile_end(server)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
