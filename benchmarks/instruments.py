"""The timers `run.py` puts around a fit: the training thread's time in the checkpoint callback's hooks and
in Keras's own saves, the publisher thread's hashing and tracker calls; and the two callbacks it adds to a
fit (the last-epoch marker, the naive per-epoch `log_model` baseline). Keras's `Model.save`/`save_weights`
and the publisher's `sha256_file` are wrapped; the tracker is timed through the callback's `tracker=`."""

from __future__ import annotations

import functools
import threading
import time

import keras
import mlflow
from common import HOOKS

from tracked_ckpt import publisher as publisher_module


class Timer:
    """Accumulates hook and save times of the current run (training thread only)."""

    current: Timer | None = None

    def __init__(self):
        self.thread = threading.get_ident()
        self.hooks: dict[str, float] = {}
        self.in_hook = 0
        self.save_s = 0.0
        self.n_saves = 0
        self.hash_s = 0.0
        self.upload_s = 0.0
        self.n_uploads = 0


def install_save_timers() -> None:
    """Time Keras's own `Model.save` / `save_weights` when called from a timed hook."""
    for name in ("save", "save_weights"):
        original = getattr(keras.Model, name)

        @functools.wraps(original)
        def timed(self, *args, _original=original, **kwargs):
            timer = Timer.current
            if timer is None or threading.get_ident() != timer.thread or not timer.in_hook:
                return _original(self, *args, **kwargs)
            t = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                timer.save_s += time.perf_counter() - t
                timer.n_saves += 1

        setattr(keras.Model, name, timed)


def install_publisher_timers() -> None:
    """Time the publisher thread's hashing (background work, for the profile)."""
    original_hash = publisher_module.sha256_file

    def sha256_file(path):
        t = time.perf_counter()
        try:
            return original_hash(path)
        finally:
            if Timer.current is not None:
                Timer.current.hash_s += time.perf_counter() - t

    publisher_module.sha256_file = sha256_file


def timed_tracker(name: str):
    """The named tracker, its `log_checkpoint` calls timed: passed as `tracker=`, nothing private is patched."""
    from tracked_ckpt.tracker import tracker_class

    class Timed(tracker_class(name)):
        def log_checkpoint(self, record, path, destination, **kwargs):
            t = time.perf_counter()
            try:
                return super().log_checkpoint(record, path, destination, **kwargs)
            finally:
                if Timer.current is not None:
                    Timer.current.upload_s += time.perf_counter() - t
                    Timer.current.n_uploads += 1

    return Timed()


def instrument(callback, timer: Timer):
    """Wrap the callback's hooks (per instance) with timers; keeps Keras's default-hook markers."""
    for hook in HOOKS:
        original = getattr(callback, hook)

        @functools.wraps(original)
        def wrapped(*args, _original=original, _hook=hook, **kwargs):
            timer.in_hook += 1
            t = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                timer.hooks[_hook] = timer.hooks.get(_hook, 0.0) + time.perf_counter() - t
                timer.in_hook -= 1

        setattr(callback, hook, wrapped)
    return callback


class EpochMarker(keras.callbacks.Callback):
    """Placed last: records when each epoch's callbacks (the checkpoint's included) are done."""

    def __init__(self):
        super().__init__()
        self.last_epoch_end = None

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch_end = time.perf_counter()


class NaiveLogModel(keras.callbacks.Callback):
    """The do-it-yourself baseline: `mlflow.keras.log_model` at every epoch end, on the training thread."""

    def __init__(self, pip_requirements):
        super().__init__()
        self.pip_requirements = pip_requirements
        self.logged = 0

    def on_epoch_end(self, epoch, logs=None):
        mlflow.keras.log_model(
            self.model, name=f"ckpt-e{epoch + 1:04d}", step=epoch + 1, pip_requirements=self.pip_requirements
        )
        self.logged += 1
