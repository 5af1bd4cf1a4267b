"""`TrackedModelCheckpoint`: Keras's `ModelCheckpoint`, with every written file logged to a tracker.

This is the only module that touches Keras internals, since Keras 3 has no
after-save hook. It overrides `ModelCheckpoint._get_file_path` (clearer errors,
private folders for non-chief workers), `_should_save_model` and `_save_model`
(to see what was written; a preemption save gets a path of its own); calls
`_set_monitor_op` early (the 3.15 batch-level save_best_only crash, and a
misspelt monitor that would crash it at the first save); sets `Model._initial_epoch` when resuming; and prints
through `keras.src.utils.io_utils.print_msg`, which follows Keras's interactive
logging setting and has no public equivalent; and finds the running `fit`'s
`CallbackList` on the stack, whose end tells that a fit which raised is over.

A fit's runtime (runs, uploads, lease, retention) is not here but in
`tracked_ckpt.session`, and what it prints in `tracked_ckpt.fit_messages`: this
class is a Keras adapter and its configuration.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import string
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

from tracked_ckpt.versions import check_supported

check_supported("keras")  # before importing Keras: one line naming the fix, not an AttributeError mid-fit

import keras
import numpy as np
from keras.callbacks import ModelCheckpoint
from keras.src.utils import io_utils

from tracked_ckpt import git as git_provenance
from tracked_ckpt.files import check_folders_writable, check_writable, checkpoint_write_error
from tracked_ckpt.fit_messages import FitMessages
from tracked_ckpt.preemption import DEFAULT_SIGNALS, signals_arg
from tracked_ckpt.publisher import PublishReport, stall_timeout_from
from tracked_ckpt.record import (
    FORMAT_SUFFIXES,
    CheckpointRecord,
    checkpoint_name,
    clean_metrics,
    file_format,
    is_better,
    sanitize_name,
    scalar,
    validate_name,
)
from tracked_ckpt.requirements import code_paths_arg
from tracked_ckpt.resume import LocalState, ResumeState, restore, validate_job_key
from tracked_ckpt.retention import Retained, check_keep_top_k
from tracked_ckpt.roles import chief_role
from tracked_ckpt.session import FitOptions, FitSession
from tracked_ckpt.specs import io_specs
from tracked_ckpt.spool import Spool, SpoolEntry, release_path
from tracked_ckpt.storage import storage_arg, storage_for_file
from tracked_ckpt.tracker import Tracker, resolve_trackers

logger = logging.getLogger("tracked_ckpt")

_UPLOAD_MODES = ("async", "sync")
_MODES = ("auto", "min", "max")


class TrackedModelCheckpoint(ModelCheckpoint):  # type: ignore[misc]  # Keras ships no type information
    """Save the model like `keras.callbacks.ModelCheckpoint`, and log every saved file to a tracker.

    Every Keras argument behaves as in `ModelCheckpoint` and the files on disk
    are the ones Keras writes. Each file Keras actually writes is logged exactly
    once, with the metadata schema of `tracked_ckpt.record` (epoch, step,
    monitored value, best-so-far flag, sha256, git commit, ...): on MLflow as
    one LoggedModel of the active run, on W&B as one artifact version.

    The training thread only freezes the written file into a spool directory
    (a hard link, or a copy across filesystems) and queues it; a background
    worker uploads in order, retrying while the tracker is unreachable. At the
    end of `fit` the callback waits up to `wait_timeout` seconds; anything not
    logged by then stays in the spool for `tracked-ckpt sync`.

    Args:
        filepath: where to save, as in `ModelCheckpoint` (`.keras`, `.h5`, or
            `.weights.h5` with `save_weights_only=True`; may hold `{epoch}`,
            `{batch}` and log-key placeholders).
        monitor, verbose, save_best_only, save_weights_only, mode, save_freq, initial_value_threshold: as in
            `keras.callbacks.ModelCheckpoint`, except that an unknown `mode` is an error rather than a warning.
            `verbose=1` also prints one line per logged checkpoint.
        tracker: "mlflow" (default), "wandb", any name registered under the
            `tracked_ckpt.trackers` entry point group, a tracker object
            (e.g. `tracked_ckpt.integrations.mlflow.MlflowTracker(...)`), or a
            list of them to log each checkpoint to several trackers.
        name: base name of the logged checkpoints (`{name}-e0003`); defaults
            to the Keras model's name, sanitised.
        upload: "async" (default) to upload on a background thread, or
            "sync" to upload inline before training continues.
        log_git: record the git commit, branch, dirty flag and (redacted)
            remote of the training code's repository: `git_repo` if given,
            else `TRACKED_CKPT_GIT_REPO`, else the repository containing the
            folder the callback was made in, the working directory, the
            launcher's original folder (a Ray Tune trial's driver) or the
            `__main__` script (see `tracked_ckpt.git.capture_for_job`).
        git_repo: path of the repository to record, for jobs that train
            outside it (e.g. a sweep trial in its own folder).
        spool_dir: where checkpoints wait to be logged; defaults to a
            `.tracked_ckpt/spool` folder next to the checkpoint files (the same
            filesystem, so freezing a file is a hard link, not a copy).
        wait_timeout: seconds `on_train_end` waits for uploads (None: no limit).
        stall_timeout: seconds `on_train_end` keeps waiting while no upload makes
            progress (tracker unreachable or failing); an upload in flight to a
            tracker that answers is progress, however slow. Default: the
            `TRACKED_CKPT_STALL_TIMEOUT` environment variable, else 30; pass
            `math.inf` to wait for the whole `wait_timeout`.
        blocking: True (default): `fit` returns once every checkpoint is logged (or
            the waits above gave up). False: `fit` returns as soon as every
            checkpoint is durable in the spool, and the uploads finish in the
            background; `tracked_ckpt.wait()`, `promote_best`, `list_checkpoints`,
            `load_model` and interpreter exit wait for them. A process killed in
            the meantime loses nothing: `tracked-ckpt sync` logs what is left.
        keep_top_k: keep only the K best checkpoints by the monitored metric,
            plus the latest, on the tracker and on local disk; promoted or
            aliased ones are never deleted. The ranking spans every checkpoint
            this callback logged into the run, across fits and, with a job key,
            across a resumed job. None (default) keeps everything.
        resume: continue an interrupted job: at the start of `fit`, reload the
            latest checkpoint this callback wrote (model and optimizer state),
            restore the best-so-far value, log into the same run again, and
            start `fit` at the next epoch (like `BackupAndRestore`; a job cut off
            mid-epoch restarts that epoch). The state lives in
            `.tracked_ckpt/resume.json` beside the checkpoints and is removed
            when `fit` completes. Or a job key (a string, e.g. the Kubernetes Job
            name): the key is recorded on the run, and a job started again with
            it, on any machine, finds that run, downloads its newest complete
            checkpoint (sha256-verified, through `load_model`'s cache) and
            continues there; local state of the same job is used first. A
            second live job with the same key is refused (see
            `tracked_ckpt.resume`).
        code_paths: module files or package folders (e.g. `["my_layers.py"]`) that
            define the model's custom layers, losses or metrics and are not an
            installed package: logged with each `.keras` checkpoint (MLflow: the
            model's `code/` folder, imported by `mlflow.pyfunc.load_model` and
            `mlflow models serve`) so it loads on another machine. A config module
            that is neither installed nor listed here is named in one warning per fit.
        preempt_on: the signals that announce preemption (default SIGTERM, what
            Kubernetes, Docker and spot VMs send; add e.g. "SIGUSR1" for SLURM's
            `--signal=USR1@90`; `()` catches none). During `fit` such a signal makes
            the callback save a checkpoint at the next batch boundary (tagged
            `preempted`), log what waits within `TRACKED_CKPT_PREEMPTION_GRACE`
            seconds (default 25), end the runs as preempted (MLflow: KILLED), and
            then end the process as the signal would have (exit status 143 for
            SIGTERM), running a handler you installed before `fit` instead when
            there is one. Main thread only (see `tracked_ckpt.preemption`).
        storage: how the tracker keeps each file: "incremental" (a manifest of content-defined
            chunks; only the chunks the destination lacks are uploaded, so a frozen base is
            stored once per MLflow experiment), "full" (a copy of the file, a normal MLflow model)
            or "auto" (default): incremental for a file of 32 MB or more whose model has at least
            half of its variables' bytes frozen (non-trainable), else full (`tracked_ckpt.storage`).
            A tracker that cannot store incrementally logs full files.

    Example:

    ```python
    import keras
    import numpy as np
    from tracked_ckpt import TrackedModelCheckpoint

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)], name="demo")
    model.compile(optimizer="adam", loss="mse")
    x, y = np.random.rand(64, 4), np.random.rand(64, 1)
    checkpoint = TrackedModelCheckpoint(
        "checkpoints/demo-{epoch:02d}.keras", monitor="val_loss", tracker="mlflow"
    )
    model.fit(x, y, validation_split=0.25, epochs=3, callbacks=[checkpoint])
    # Three LoggedModels demo-e0001..demo-e0003 in the MLflow run, with val_loss attached.
    ```
    """

    monitor_op: Any  # Keras's comparison for `monitor` (set by `_set_monitor_op`, lazily in Keras 3.11+)

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
        *,
        tracker: str | Tracker | Sequence[str | Tracker] = "mlflow",
        name: str | None = None,
        upload: str = "async",
        log_git: bool = True,
        git_repo: str | os.PathLike[str] | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        wait_timeout: float | None = 600.0,
        stall_timeout: float | None = None,
        blocking: bool = True,
        keep_top_k: int | None = None,
        resume: bool | str = False,
        code_paths: Sequence[str | os.PathLike[str]] | None = None,
        preempt_on: str | int | Sequence[str | int] | None = DEFAULT_SIGNALS,
        storage: str = "auto",
    ):
        if mode not in _MODES:
            raise ValueError(f"Invalid mode {mode!r}: use 'auto', 'min' or 'max'.")
        if upload not in _UPLOAD_MODES:
            raise ValueError(f"Invalid upload {upload!r}: use 'async' (default) or 'sync'.")
        filepath = os.fspath(filepath)
        if "://" in filepath:
            raise ValueError(
                f"filepath {filepath!r} is a remote URI: tracked-ckpt saves locally and uploads "
                "through the tracker, so pass a local path."
            )
        super().__init__(
            filepath,
            monitor=monitor,
            verbose=verbose,
            save_best_only=save_best_only,
            save_weights_only=save_weights_only,
            mode=mode,
            save_freq=save_freq,
            initial_value_threshold=initial_value_threshold,
        )
        if not hasattr(self, "mode"):  # Keras 3.10 picks its direction in __init__ and keeps no `mode`
            self.mode = mode
        self.format = file_format(self.filepath)
        self.name = validate_name(name) if name is not None else None
        self.upload = upload
        self.log_git = log_git
        self.git_repo = git_repo
        self.code_paths = code_paths_arg(code_paths)  # handed on in each record (tracked_ckpt.requirements)
        # Jobs (and sweep trials) may change directory before fit: remember where this one started.
        self._started_in = git_provenance._cwd()
        self.wait_timeout = wait_timeout
        self.blocking = bool(blocking)
        self.stall_timeout = stall_timeout_from(stall_timeout)
        self.keep_top_k = None if keep_top_k is None else check_keep_top_k(keep_top_k)
        self.trackers = resolve_trackers(tracker)
        self.spool = Spool(
            spool_dir
            if spool_dir is not None
            else os.path.join(os.path.dirname(os.path.abspath(self.filepath)), ".tracked_ckpt", "spool")
        )
        self.resume = resume if isinstance(resume, bool) else validate_job_key(resume)
        self._state = LocalState(os.path.join(os.path.dirname(self.spool.directory), "resume.json"))
        self.best_value: float | None = None  # best monitored value among logged checkpoints
        self.best_name: str | None = None
        self.preempt_on = signals_arg(preempt_on)
        self.storage = storage_arg(storage)
        self._retained = Retained()  # what keep_top_k ranks: this callback's checkpoints, across its fits
        self._reset_fit_state()

    def _reset_fit_state(self) -> None:
        """What one fit holds at run time; never copied or pickled (see `__getstate__`)."""
        self._session: FitSession | None = None
        self._git: Callable[[], git_provenance.GitInfo] = git_provenance.GitInfo  # this fit's provenance, when asked
        self._saving: dict[str, Any] | None = None
        self._warned_monitor = False
        self._preempting = False  # the next save is the one a preemption signal asked for
        self._last_saved_step: int | None = None
        self._messages = FitMessages(io_utils.print_msg)
        self._chief, self._task_id = True, None

    # -- a callback is its configuration ---------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The callback's configuration, for `copy.deepcopy` (KerasTuner, per trial) and `pickle` (Ray).

        A copy has the same arguments (and the best value so far) and shares nothing
        with the original: no model, no run, no publisher; each fit makes its own.
        """
        state = dict(self.__dict__)
        for runtime in ("_session", "_git", "_saving", "_messages", "_warned_monitor", "_chief", "_task_id"):
            state.pop(runtime, None)
        for runtime in ("_preempting", "_last_saved_step"):
            state.pop(runtime, None)
        state["_model"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_fit_state()

    @property
    def session(self) -> FitSession | None:
        """The runtime of this callback's current or last fit (its runs, uploads and report); None before one."""
        return self._session

    @property
    def last_report(self) -> PublishReport | None:
        """What the last fit logged and what it left in the spool, once that fit has ended."""
        return self._session.report if self._session is not None else None

    # -- Keras hooks ----------------------------------------------------------------------

    @override
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        self._chief, self._task_id = chief_role(self.model)
        if self.monitor_op is None:
            try:
                # Keras sets this lazily at the first epoch end, which crashes batch-level
                # save_best_only (3.15); resolve it now while the compiled metrics are known.
                super()._set_monitor_op()
            except ValueError:
                pass  # metrics not built yet: resolved again at the first save (`_resolve_monitor_op`)
        if not self._chief:
            # Saving is collective under MultiWorkerMirroredStrategy, so this worker saves
            # too, into a private folder it deletes; only the chief talks to the tracker.
            logger.info("Worker %s is not the chief: its checkpoints are not logged.", self._task_id)
            return
        self._check_writable()
        self._git = (
            git_provenance.capture_in_background(self.git_repo, self._started_in)
            if self.log_git
            else git_provenance.GitInfo
        )
        self._messages = FitMessages(io_utils.print_msg)
        options = FitOptions(
            asynchronous=self.upload == "async",
            blocking=self.blocking,
            wait_timeout=self.wait_timeout,
            stall_timeout=self.stall_timeout,
            keep_top_k=self.keep_top_k,
            resume=self.resume,
        )
        # `params` is the one dict Keras hands every callback of this fit: callbacks of one fit share a run.
        self._session = FitSession(
            self.trackers,
            self.spool,
            options,
            state=self._state,
            fit=self.params,
            on_logged=self._on_logged,
            on_end=self._summarize,
            retained=self._retained,
        )
        state = self._session.begin(self._base_name())
        self._session.catch_stop_signals(self.preempt_on)
        fit_callbacks = self._fit_callbacks()
        if fit_callbacks is not None:
            self._session.end_when_gone(fit_callbacks)
        if state is not None:
            self._restore(state)

    def _fit_callbacks(self) -> object | None:
        """The running `fit`'s `CallbackList` (a local of Keras's `fit`), found on the stack.

        It is freed when `fit` returns or the exception it raised has been handled: the
        moment a fit that Keras never ended (no `on_train_end` after an exception) is over.
        """
        frame: types.FrameType | None = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == "fit":
                found = frame.f_locals.get("callbacks")
                if self in getattr(found, "callbacks", ()):
                    return found
            frame = frame.f_back
        return None

    @override
    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_train_batch_end(batch, logs)
        if self._session is not None and self._session.open and self._session.preempted:
            self._preempt(self._current_epoch, batch, logs or {})

    @override
    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._resolve_monitor_op(logs)
        super().on_epoch_end(epoch, logs)
        self._messages.show_queued()
        if self._session is not None and self._session.open and self._session.preempted:
            self._preempt(epoch, None, logs or {})  # the signal came during validation

    @override
    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_end(logs)
        session = self._session
        if session is None:
            return
        stop = session.stop
        if stop is not None and stop.received is not None and session.open:  # it came after the last batch
            try:
                session.end(completed=True, deadline=session.preemption_deadline())
            finally:
                stop.deliver()
            return
        if stop is not None:
            stop.restore()  # here, on the training thread: an end in the background cannot
        if self.blocking or not session.asynchronous:
            session.end(completed=True)
        else:
            session.end_in_background(completed=True)

    def _preempt(self, epoch: int, batch: int | None, logs: dict[str, Any]) -> None:
        """Save now (unless this step is saved), log within the grace period, end as the signal would have."""
        session = self._session
        assert session is not None and session.stop is not None
        # Under a multi-worker strategy saving is collective: a save by the chief alone would hang.
        if self._last_saved_step != self._global_step() and self._task_id is None:
            self._preempting = True
            try:
                self._save_model(epoch, batch, logs)
            except Exception as exc:  # e.g. a full disk: still log what waits, and end
                logger.error("Could not save a checkpoint at the preemption signal: %s", exc)
            finally:
                self._preempting = False
        try:
            session.end_preempted()
        finally:
            session.stop.deliver()
        # Only here when the handler you installed returned: this fit stops, its runs are ended.
        self.model.stop_training = True

    @override
    def _get_file_path(self, epoch: int, batch: int | None, logs: dict[str, Any] | None) -> str:
        if self._preempting:
            # A file of its own: never the user's best file, and no epoch metric to fill in.
            name = checkpoint_name(f"{self._base_name()}-preempted", epoch + 1, None if batch is None else batch + 1)
            folder = os.path.dirname(os.path.abspath(self.filepath))
            if "{" in folder:  # a templated folder: the one above the spool's own
                folder = os.path.dirname(os.path.dirname(self.spool.directory))
            return os.path.join(folder, name + FORMAT_SUFFIXES[self.format])
        try:
            path: str = super()._get_file_path(epoch, batch, logs)
        except KeyError:
            known = {"epoch", *(logs or {})} | ({"batch"} if batch is not None else set())
            missing = [
                name
                for _, name, _, _ in string.Formatter().parse(self.filepath)
                if name and name.split(".")[0].split("[")[0] not in known
            ]
            raise KeyError(
                f"filepath {self.filepath!r} uses {{{', '.join(missing) or '?'}}}, which is not in the "
                f"{'batch' if batch is not None else 'epoch'} logs (available: {', '.join(sorted(known))}). "
                "Use one of those names, or a fixed file name."
            ) from None
        if not self._chief:
            return os.path.join(os.path.dirname(path), f"workertemp_{self._task_id}", os.path.basename(path))
        return path

    @override
    def _should_save_model(self, epoch: int, batch: int | None, logs: dict[str, Any] | None, filepath: str) -> bool:
        if self.save_best_only and self.monitor_op is None:
            self._resolve_monitor_op(logs)  # see on_train_begin: the Keras 3.15 batch-level crash
        # A preemption save is not a candidate for Keras's best: it is saved whatever its value.
        decision: bool = self._preempting or super()._should_save_model(epoch, batch, logs, filepath)
        if decision:
            release_path(filepath)
            self._saving = {"filepath": filepath, "preempted": self._preempting}
        return decision

    def _resolve_monitor_op(self, logs: dict[str, Any] | None) -> None:
        """Keras's direction for mode="auto", resolved before Keras asks; a monitor not in the logs ranks as min.

        Keras raises when it cannot tell the direction. For a key that is not in the logs at
        all (a typo, no validation data) that would end the fit at its first save: rank as
        "min" and keep saving (`_make_record` names the available keys once). A key that is
        in the logs but of unknown direction still gets Keras's error, which asks for `mode=`.
        """
        if self.monitor_op is not None:
            return
        try:
            super()._set_monitor_op()
        except ValueError:
            if logs is not None and self.monitor in logs:
                raise
            self.monitor_op = keras.ops.less

    @override
    def _save_model(self, epoch: int, batch: int | None, logs: dict[str, Any] | None) -> None:
        self._saving = None
        session = self._session
        with session.file_lock if session is not None else contextlib.nullcontext():
            try:
                super()._save_model(epoch, batch, logs)
            except OSError as exc:
                said = checkpoint_write_error(exc, self._saving["filepath"] if self._saving else self.filepath)
                if said is None:
                    raise
                raise said from exc
            if self._saving is not None:  # Keras decided to save and the write returned
                saving, self._saving = self._saving, None
                if not self._chief:
                    shutil.rmtree(os.path.dirname(saving["filepath"]), ignore_errors=True)
                    return
                self._on_saved(saving["filepath"], epoch, batch, logs or {}, saving["preempted"])

    # -- after a save ---------------------------------------------------------------------

    def _on_saved(
        self, filepath: str, epoch: int, batch: int | None, logs: dict[str, Any], preempted: bool = False
    ) -> None:
        session = self._session
        if session is None or not session.open:  # saved outside fit (e.g. a direct call): nothing to log to
            return
        record = self._make_record(session, filepath, epoch, batch, logs, preempted)
        self._last_saved_step = record.step
        session.log_saved(
            record,
            filepath,
            resume_state=(self.best_value, self.best_name, scalar(self.best)) if self.resume else None,
            defer=preempted,
        )
        if not session.asynchronous:
            self._messages.show_queued()

    def _make_record(
        self,
        session: FitSession,
        filepath: str,
        epoch: int,
        batch: int | None,
        logs: dict[str, Any],
        preempted: bool = False,
    ) -> CheckpointRecord:
        # A preemption save is a partial epoch: it never ranks (no value), nor becomes the best.
        value = None if preempted else scalar(logs.get(self.monitor))
        if value is None and not preempted and not self._warned_monitor:
            self._warned_monitor = True
            self._messages.monitor_missing(self.monitor, "batch" if batch is not None else "epoch", logs)
        is_best = value is not None and (
            self.best_value is None or is_better(value, self.best_value, self.resolved_mode)
        )
        name = session.name_for(self._base_name(), epoch + 1, None if batch is None else batch + 1)
        if is_best:
            self.best_value, self.best_name = value, name
        git = self._git()
        size = os.path.getsize(filepath)
        return CheckpointRecord(
            name=name,
            epoch=epoch + 1,
            step=self._global_step(),
            batch=None if batch is None else batch + 1,
            monitor=self.monitor,
            value=value,
            mode=self.resolved_mode,
            is_best=is_best,
            sha256="",  # filled in by the publisher, off the training thread
            size_bytes=size,
            format=self.format,
            filepath=os.path.abspath(filepath),
            keras_version=keras.__version__,
            backend=keras.backend.backend(),
            git_commit=git.commit,
            git_branch=git.branch,
            git_dirty=git.dirty,
            git_remote=git.remote,
            metrics=clean_metrics(logs),
            io_specs=io_specs(self.model) if self.format == "keras" else None,
            code_paths=self.code_paths,
            preempted=preempted,
            storage=storage_for_file(self.storage, size, self._frozen_fraction() if self.storage == "auto" else None),
        )

    def _frozen_fraction(self) -> float | None:
        """The share of the model's variables' bytes that training cannot change: its non-trainable
        weights, against those plus its trainable weights and the optimizer's variables."""
        try:
            frozen = _bytes_of(self.model.non_trainable_weights)
            changing = _bytes_of(self.model.trainable_weights)
            optimizer = getattr(self.model, "optimizer", None)
            changing += _bytes_of(optimizer.variables) if optimizer is not None else 0
        except (AttributeError, TypeError, ValueError):
            return None  # a model that does not describe its variables: the file's size decides
        return frozen / (frozen + changing) if frozen + changing else None

    @property
    def resolved_mode(self) -> str:
        """ "min" or "max": the explicit mode, or what Keras inferred for mode="auto"."""
        if self.mode in ("min", "max"):
            return self.mode
        if self.monitor_op is None:
            try:
                self._set_monitor_op()
            except ValueError:
                return "min"
        return "max" if self.monitor_op in (keras.ops.greater, np.greater) else "min"  # np: Keras 3.10

    def _base_name(self) -> str:
        if self.name is None:
            self.name = sanitize_name(getattr(self.model, "name", None) or "model")
        return self.name

    def _global_step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            try:
                return int(keras.ops.convert_to_numpy(optimizer.iterations))
            except Exception:
                pass
        return 0

    def _check_writable(self) -> None:
        """Fail before the first epoch, not after it, when checkpoints cannot be written."""
        checkpoints = os.path.dirname(os.path.abspath(self.filepath))
        check_folders_writable(
            [
                (checkpoints, "filepath", lambda: check_writable(checkpoints)),
                (self.spool.directory, "spool_dir", self.spool.check_writable),
            ]
        )

    # -- resume ---------------------------------------------------------------------------

    @property
    def state_path(self) -> str:
        """The local resume state file (`resume=True` or a job key)."""
        return self._state.path

    def _restore(self, state: ResumeState) -> None:
        """Reload the latest checkpoint and bookkeeping, and move fit's start to the next epoch."""
        initial_epoch = restore(self.model, state, self.state_path)
        self.best_value = state.best_value
        self.best_name = state.best_name
        if self.save_best_only and state.keras_best is not None:
            self.best = state.keras_best
        self.model._initial_epoch = initial_epoch  # Keras internal: fit starts its epoch loop here
        last = state.last
        self._messages.resumed(
            job_key=self.resume if isinstance(self.resume, str) else None,
            checkpoint=checkpoint_name(self._base_name(), last.epoch, last.batch),
            epoch=last.epoch,
            step=last.step,
            rerun=last.batch is not None,
            runs=self._session.run_links() if self._session is not None else [],
            done=initial_epoch >= self.params.get("epochs", initial_epoch + 1),
            verbose=self.verbose > 0,
        )

    # -- what the session reports --------------------------------------------------------

    def _on_logged(self, entry: SpoolEntry, tracker: str, ref: str) -> None:
        if self.verbose > 0 and self._session is not None:
            self._messages.logged(entry, self._session.trackers[tracker].display_name, ref)

    def _summarize(self, session: FitSession, report: PublishReport) -> None:
        """Say what the fit logged, where, and what waits in the spool (called as its session ends)."""
        best = None if self.best_value is None else f"{self.best_name or ''} ({self.monitor}={self.best_value:.5g})"
        self._messages.summarize(
            report, session.trackers, session.destinations, self.spool.directory, best=best, verbose=self.verbose > 0
        )


def _bytes_of(variables: Any) -> int:
    """The bytes a list of Keras variables holds (4 per element when the dtype is unknown)."""
    total = 0
    for variable in variables:
        try:
            itemsize = np.dtype(str(variable.dtype)).itemsize
        except TypeError:
            itemsize = 4  # e.g. bfloat16, which numpy does not know
        total += math.prod(int(d) for d in variable.shape) * itemsize
    return total
