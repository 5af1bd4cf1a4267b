"""The measuring half of `run.py`: `Bench` runs the variants' fits against a real local MLflow server, the
embedded sqlite store and W&B offline, and returns one dict of raw numbers per run (timings, CPU, hook and
save times); it also owns the schedule (warm-up, round-robin repeats, the time budget, the realistic
pairs). Importing it makes the run's temporary folder `WORK` and points W&B and MLflow's local files
into it, so import it before anything imports wandb."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import traceback
import warnings

from common import (
    OUT,
    MlflowServer,
    build_model,
    cpu_snapshot,
    other_cpu_between,
    tiny_data,
    versions,
    wait_for_quiet,
)

T_START = time.monotonic()

# W&B: offline, silent, and every file it writes under one temp dir (set before importing wandb).
os.makedirs(OUT, exist_ok=True)
WORK = tempfile.mkdtemp(prefix="bench-", dir=OUT)
os.environ["WANDB_SILENT"] = "true"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_DIR"] = os.path.join(WORK, "wandb")
os.environ["WANDB_DATA_DIR"] = os.path.join(WORK, "wandb-data")
os.environ["WANDB_CACHE_DIR"] = os.path.join(WORK, "wandb-cache")
os.environ["WANDB_CONFIG_DIR"] = os.path.join(WORK, "wandb-config")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
for d in ("wandb", "wandb-data", "wandb-cache", "wandb-config"):
    os.makedirs(os.path.join(WORK, d), exist_ok=True)

import keras  # noqa: E402
import mlflow  # noqa: E402
from instruments import (  # noqa: E402
    EpochMarker,
    NaiveLogModel,
    Timer,
    install_publisher_timers,
    install_save_timers,
    instrument,
    timed_tracker,
)
from mlflow.tracking import MlflowClient  # noqa: E402
from variants import BATCH, N_TRAIN, N_VAL, REALISTIC_VARIANTS, VARIANTS  # noqa: E402

import tracked_ckpt  # noqa: E402
from tracked_ckpt import TrackedModelCheckpoint  # noqa: E402

logging.getLogger("mlflow").setLevel(logging.ERROR)
logging.getLogger("tracked_ckpt").setLevel(logging.ERROR)
logging.getLogger("absl").setLevel(logging.ERROR)  # MlflowModelCheckpointCallback's legacy-HDF5 warning
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # "N out of the last M calls ... retracing" (new models)
warnings.filterwarnings("ignore")


class Bench:
    """One benchmark session: the server, the runs so far, and what was skipped, cut or failed."""

    def __init__(self, args):
        self.args = args
        self.server: MlflowServer | None = None
        self.embedded_uri = f"sqlite:///{os.path.join(WORK, 'embedded', 'm.db')}"
        self.embedded_artifacts = os.path.join(WORK, "embedded", "artifacts")
        self.skipped: dict[str, str] = {}
        self.errors: list[str] = []
        self.runs: list[dict] = []
        self.file_mb: dict[str, float] = {}
        self.pip = [f"keras=={keras.__version__}", f"tensorflow=={versions()['tensorflow']}"]
        self._experiments: dict[tuple[str, str], str] = {}
        self.quiet_waited = 0.0
        self.cut: dict[str, tuple[int, int]] = {}
        self.realistic_runs: list[dict] = []
        self.realistic_steps: dict[str, int] = {}

    # setup ----------------------------------------------------------------------------------------

    def start(self) -> None:
        os.chdir(WORK)  # ./mlruns, ./wandb and friends land in the temp dir
        self.server = MlflowServer(os.path.join(WORK, "server")).start(timeout=300)  # a busy shared machine
        log(f"MLflow server {self.server.url} healthy after {self.server.startup_seconds:.1f} s")
        os.makedirs(os.path.dirname(self.embedded_artifacts), exist_ok=True)
        # Create (migrate) the embedded store now, not inside a timed run.
        client = MlflowClient(self.embedded_uri)
        client.search_experiments()
        install_save_timers()
        install_publisher_timers()
        self._check_optional()

    def _check_optional(self) -> None:
        selected = self.variants()
        if "tracked_wandb_offline" in selected:
            try:
                from tracked_ckpt.tracker import tracker_class

                tracker_class("wandb")
            except Exception as exc:  # being written concurrently: skip, don't crash
                self.skipped["tracked_wandb_offline"] = (
                    f"tracked_ckpt.integrations.wandb not usable: {type(exc).__name__}: {exc}"
                )
        if "wandb_callback" in selected:
            try:
                from wandb.integration.keras import WandbModelCheckpoint  # noqa: F401
            except Exception as exc:
                self.skipped["wandb_callback"] = f"wandb.integration.keras not importable: {type(exc).__name__}: {exc}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def variants(self) -> list[str]:
        return [v for v, _ in VARIANTS if v in self.args.variants]

    def _experiment(self, uri: str, name: str, artifact_location: str | None = None) -> str:
        key = (uri, name)
        if key not in self._experiments:
            client = MlflowClient(uri)
            found = client.get_experiment_by_name(name)
            self._experiments[key] = (
                found.experiment_id if found else client.create_experiment(name, artifact_location=artifact_location)
            )
        return self._experiments[key]

    # one run --------------------------------------------------------------------------------------

    def run_once(self, variant: str, size: str, model, data, epochs: int, timed: bool = True) -> dict:
        x, y, xv, yv = data
        run_dir = tempfile.mkdtemp(prefix=f"{variant}-", dir=WORK)
        ckpt = os.path.join(run_dir, "ckpt-{epoch:02d}.keras")
        timer = Timer()
        result: dict = {"variant": variant, "size": size, "epochs": epochs}
        uri = None
        wandb_run = None
        callback = None
        t_setup = time.perf_counter()
        # -- per-variant setup (outside the timed fit): the tracker's run, the callback --
        if variant in (
            "tracked_async_server",
            "tracked_nowait_server",
            "tracked_sync_server",
            "mlflow_callback",
            "naive_log_model",
        ):
            uri = self.server.url
            experiment_id = self._experiment(uri, f"bench-{size}")
        elif variant == "tracked_async_embedded":
            uri = self.embedded_uri
            experiment_id = self._experiment(uri, f"bench-{size}", f"file://{self.embedded_artifacts}")
        if uri is not None:
            mlflow.set_tracking_uri(uri)
            mlflow.start_run(experiment_id=experiment_id, run_name=f"{variant}-{size}")
        if variant in ("tracked_wandb_offline", "wandb_callback"):
            import wandb

            wandb_run = wandb.init(
                project="tracked-ckpt-bench",
                mode="offline",
                dir=os.path.join(WORK, "wandb"),
                settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
                name=f"{variant}-{size}",
            )
        if variant == "keras":
            callback = keras.callbacks.ModelCheckpoint(ckpt, monitor="val_loss")
        elif variant.startswith("tracked_"):
            tracker = timed_tracker("wandb" if variant == "tracked_wandb_offline" else "mlflow")
            callback = TrackedModelCheckpoint(
                ckpt,
                monitor="val_loss",
                tracker=tracker,
                upload="sync" if variant == "tracked_sync_server" else "async",
                blocking=variant != "tracked_nowait_server",
            )
        elif variant == "mlflow_callback":
            from mlflow.tensorflow import MlflowModelCheckpointCallback

            callback = MlflowModelCheckpointCallback(
                monitor="val_loss", mode="min", save_best_only=False, save_freq="epoch"
            )
        elif variant == "wandb_callback":
            from wandb.integration.keras import WandbModelCheckpoint

            callback = WandbModelCheckpoint(ckpt, monitor="val_loss", save_best_only=False)
        elif variant == "naive_log_model":
            callback = NaiveLogModel(self.pip)
        result["setup_s"] = time.perf_counter() - t_setup
        callbacks = [] if callback is None else [instrument(callback, timer)]
        marker = EpochMarker()
        result["quiet_wait_s"] = self._quiet() if timed else 0.0
        snap0 = cpu_snapshot(self.server.proc.pid)
        cpu0 = time.process_time()
        Timer.current = timer
        try:
            t0 = time.perf_counter()
            model.fit(
                x,
                y,
                validation_data=(xv, yv),
                epochs=epochs,
                batch_size=BATCH,
                verbose=0,
                callbacks=[*callbacks, marker],
            )
            t1 = time.perf_counter()
        finally:
            Timer.current = None
            cpu1 = time.process_time()
            snap1 = cpu_snapshot(self.server.proc.pid)
            # -- teardown (outside the timed fit) --
            t_teardown = time.perf_counter()
            tracked_ckpt.wait()  # blocking=False: the uploads finish after fit returned
            if uri is not None:
                mlflow.end_run()
            if wandb_run is not None:
                import wandb

                wandb_run.finish()
                wandb.teardown()
            result["teardown_s"] = time.perf_counter() - t_teardown
        result.update(
            fit_s=t1 - t0,
            to_last_epoch_s=marker.last_epoch_end - t0,
            cpu_s=cpu1 - cpu0,
            server_cpu_s=snap1["server"] - snap0["server"],
            other_cpu_s=other_cpu_between(snap0, snap1),
            hooks=dict(timer.hooks),
            begin_s=timer.hooks.get("on_train_begin", 0.0),
            end_s=timer.hooks.get("on_train_end", 0.0),
            per_epoch_hooks_s=sum(v for k, v in timer.hooks.items() if k not in ("on_train_begin", "on_train_end")),
            save_s=timer.save_s,
            n_saves=timer.n_saves,
            hash_s=timer.hash_s,
            upload_s=timer.upload_s + timer.hash_s,  # the background work: sha256 + the tracker calls
            n_uploads=timer.n_uploads,
        )
        result["callback_s"] = sum(timer.hooks.values())
        if isinstance(callback, TrackedModelCheckpoint):
            report = callback.last_report
            result["logged"] = len(report.logged) if report else 0
            if report is None or not report.ok or result["logged"] != epochs:
                raise RuntimeError(f"{variant}: logged {result['logged']} of {epochs} checkpoints: {report}")
        if variant in ("keras", "tracked_async_server") and size not in self.file_mb:
            files = sorted(f for f in os.listdir(run_dir) if f.endswith(".keras"))
            if files:
                self.file_mb[size] = os.path.getsize(os.path.join(run_dir, files[-1])) / 1e6
        self._cleanup(run_dir)
        return result

    def _cleanup(self, run_dir: str) -> None:
        """Drop this run's files (local, server, embedded, W&B) so disk use stays flat; then sync."""
        shutil.rmtree(run_dir, ignore_errors=True)
        for d in (
            self.server.artifacts,
            self.embedded_artifacts,
            os.path.join(WORK, "mlruns"),
            os.path.join(WORK, "wandb"),
            os.path.join(WORK, "wandb-data"),
            os.path.join(WORK, "wandb-cache"),
        ):
            if os.path.isdir(d):
                for name in os.listdir(d):
                    path = os.path.join(d, name)
                    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        os.sync()

    def _quiet(self) -> float:
        """Before a timed run, wait a little for other processes on the machine to go quiet (capped)."""
        budget = self.args.quiet_budget - self.quiet_waited
        if budget <= 0:
            return 0.0
        waited = wait_for_quiet(self.server.proc.pid, max_wait=min(15.0, budget))
        self.quiet_waited += waited
        return waited

    # the schedule ---------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """One untimed 1-epoch run of every variant at the smallest size: imports and first-use costs."""
        size = self.args.sizes[0]
        model = build_model(size)
        data = _data()
        model.fit(data[0], data[1], epochs=1, batch_size=BATCH, verbose=0)
        for variant in self.variants():
            if variant in self.skipped:
                continue
            t = time.perf_counter()
            try:
                self.run_once(variant, size, model, data, epochs=1, timed=False)
            except Exception as exc:
                self.skipped[variant] = f"failed in warm-up: {type(exc).__name__}: {exc}"
                log(f"  warm-up {variant}: SKIPPED ({self.skipped[variant]})")
                log(traceback.format_exc(limit=3))
                continue
            log(f"  warm-up {variant}: {time.perf_counter() - t:.1f} s")

    def run(self) -> None:
        variants = [v for v in self.variants() if v not in self.skipped]
        for size in self.args.sizes:
            model = build_model(size)
            data = _data()
            model.fit(data[0], data[1], epochs=1, batch_size=BATCH, verbose=0)  # trace once per size
            log(
                f"\n== {size}: {model.count_params():,} params; {len(variants)} variants x {self.args.repeats} "
                f"repeats x {self.args.epochs} epochs"
            )
            round_times: list[float] = []
            for rep in range(self.args.repeats):
                if rep >= 2 and size == self.args.sizes[-1] and round_times:
                    projected = (
                        time.monotonic()
                        - T_START
                        + max(round_times)
                        + self.scaling_estimate()
                        + self.realistic_estimate()
                    )
                    if projected > 60 * self.args.budget:
                        self.cut[size] = (rep, self.args.repeats)
                        log(
                            f"  time budget: stopping {size} after {rep} repeats (projected "
                            f"{projected / 60:.1f} min > {self.args.budget} min)"
                        )
                        break
                t_round = time.monotonic()
                order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
                for variant in order:
                    result = self._run_or_note(variant, size, model, data, self.args.epochs, f"{size} run {rep + 1}")
                    if result is None:
                        continue
                    result["repeat"] = rep + 1
                    self.runs.append(result)
                    log(
                        f"  [{rep + 1}/{self.args.repeats}] {variant:24s} fit {result['fit_s']:7.2f} s   "
                        f"to last epoch {result['to_last_epoch_s']:7.2f} s   callback {result['callback_s']:6.2f} s   "
                        f"save {result['save_s']:6.2f} s"
                    )
                round_times.append(time.monotonic() - t_round)
            del model
            keras.backend.clear_session()

    def _run_or_note(self, variant: str, size: str, model, data, epochs: int, where: str) -> dict | None:
        """One timed run; a failing one is noted in the results and skipped (None), not fatal."""
        try:
            return self.run_once(variant, size, model, data, epochs)
        except Exception as exc:
            message = f"{variant} @ {where}: {type(exc).__name__}: {exc}"
            self.errors.append(message)
            log("  ERROR " + message)
            log(traceback.format_exc(limit=4))
            return None

    def run_realistic(self) -> None:
        """Training that takes several seconds per epoch, a checkpoint at each: uploads can hide behind it.

        Plain `ModelCheckpoint` and the async upload to the server run in alternating pairs
        (A B, then B A, ...), each pair back to back, so a noisy moment hits both of a pair.
        """
        for size in self.args.realistic_sizes:
            model = build_model(size)
            steps = self._steps_for(model, self.args.epoch_seconds)
            self.realistic_steps[size] = steps
            data = _data(steps * BATCH)
            label = f"{size} realistic"
            log(
                f"\n== {label}: {steps} steps/epoch (~{self.args.epoch_seconds:.0f} s of training), "
                f"{self.args.realistic_epochs} epochs, {self.args.pairs} alternating pairs"
            )
            for pair in range(self.args.pairs):
                order = REALISTIC_VARIANTS if pair % 2 == 0 else REALISTIC_VARIANTS[::-1]
                for variant in order:
                    result = self._run_or_note(
                        variant, size, model, data, self.args.realistic_epochs, f"{label} pair {pair + 1}"
                    )
                    if result is None:
                        continue
                    result.update(size=label, repeat=pair + 1, steps_per_epoch=steps)
                    self.realistic_runs.append(result)
                    log(
                        f"  [{pair + 1}/{self.args.pairs}] {variant:24s} fit {result['fit_s']:7.2f} s   "
                        f"to last epoch {result['to_last_epoch_s']:7.2f} s   on_train_end {result['end_s']:5.2f} s"
                    )
            del model
            keras.backend.clear_session()

    @staticmethod
    def _steps_for(model, seconds: float) -> int:
        """Steps per epoch that take about `seconds` of training on this machine (measured now)."""
        probe = 20
        x, y = tiny_data(probe * BATCH, seed=2)
        model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)  # trace
        t = time.perf_counter()
        model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
        per_step = (time.perf_counter() - t) / probe
        return max(2, round(seconds / per_step))

    def realistic_estimate(self) -> float:
        """Rough seconds the realistic rows take."""
        per_run = self.args.realistic_epochs * (self.args.epoch_seconds + 1.0) + 4.0
        return len(self.args.realistic_sizes) * self.args.pairs * len(REALISTIC_VARIANTS) * per_run

    def scaling_estimate(self) -> float:
        """Rough seconds the scaling part takes on this machine when it is quiet."""
        if self.args.no_scaling:
            return 0.0
        per_size = {"10MB": 8.0, "60MB": 15.0, "250MB": 40.0}
        return 15.0 + 0.045 * self.args.scaling_n + sum(per_size.get(s, 30.0) for s in self.args.sizes)


def _data(n_train: int = N_TRAIN):
    x, y = tiny_data(n_train, seed=0)
    xv, yv = tiny_data(N_VAL, seed=1)
    return x, y, xv, yv


def log(message: str) -> None:
    print(message, flush=True)
