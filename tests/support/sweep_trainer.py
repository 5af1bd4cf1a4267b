"""Trainers of a concurrent sweep, each its own process, and `TrainerFleet` to run many at once.

`python sweep_trainer.py '<json cfg>'` is one trainer. It trains a tiny
model in the current directory with `TrackedModelCheckpoint` (one checkpoint an
epoch, a scripted `score` so the run's best is known), behind a barrier: it
creates `<name>.ready` once its imports are paid, starts training only when the
file `go` exists, and writes `<name>.json` with what it saw. Every wait is bounded.

cfg keys: name, scores (one value or null per epoch), uri, experiment,
explicit (attach with an explicit MlflowTracker, else MLFLOW_* env + fluent run),
registered (promote the run's best into this registered model; "" to skip).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for `support`

BARRIER_TIMEOUT = 600.0


def main(cfg: dict) -> None:
    import tracked_ckpt
    from support.helpers import InjectMetric, make_data, make_model
    from tracked_ckpt import TrackedModelCheckpoint
    from tracked_ckpt.fits import last_destination
    from tracked_ckpt.integrations.mlflow import MlflowTracker

    name = cfg["name"]
    x, y = make_data()
    model = make_model(name)
    if cfg["explicit"]:
        tracker = MlflowTracker(tracking_uri=cfg["uri"], experiment=cfg["experiment"], run_name=name)
    else:
        tracker = "mlflow"  # MLFLOW_TRACKING_URI + MLFLOW_EXPERIMENT_NAME, fluent run
    callback = TrackedModelCheckpoint(
        name + "/{epoch}.keras", monitor="score", mode="min", tracker=tracker, wait_timeout=600
    )
    open(name + ".ready", "w").close()
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while not os.path.exists("go"):  # the barrier: every trainer has paid its imports
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.02)
    # Wall clock and this process's CPU (all threads) at the start and the end, for benchmarks/trainers.py.
    result = {"name": name, "started": time.time(), "cpu_before_go": time.process_time()}
    model.fit(
        x,
        y,
        epochs=len(cfg["scores"]),
        batch_size=8,
        verbose=0,
        callbacks=[InjectMetric("score", cfg["scores"]), callback],
    )
    result["fit_done"] = time.time()  # on_train_end waited for this run's uploads
    result["cpu_fit_done"] = time.process_time()
    result["run_id"] = last_destination("mlflow")["run_id"]
    result["pending"] = [e.record.name for e in callback.last_report.pending]
    result["upload_errors"] = callback.last_report.errors
    if cfg.get("registered"):
        # What a sweep job does last: offer its best to the shared registered model (scope: this run).
        try:
            promoted = tracked_ckpt.promote_best(cfg["registered"])
            result["promotion"] = {
                "promoted": promoted.promoted,
                "version": promoted.version,
                "epoch": promoted.checkpoint.record.epoch,
                "reason": promoted.reason,
            }
        except Exception:
            result["promotion"] = {"error": traceback.format_exc()}
    with open(name + ".json.tmp", "w") as f:
        json.dump(result, f)
    os.replace(name + ".json.tmp", name + ".json")


class TrainerFleet:
    """Many trainer processes in one directory, against one MLflow server; every wait bounded.

    Used by tests/test_concurrency.py and benchmarks/trainers.py:

        with TrainerFleet(root, url, experiment, scores, registered="sweep") as fleet:
            fleet.start()        # spawn; wait until every trainer paid its imports
            fleet.go()           # release the barrier: all fits start together
            fleet.wait()         # every process exited (else AssertionError, and all killed)
        fleet.results            # name -> what the trainer wrote to <name>.json

    Every other trainer attaches with an explicit `MlflowTracker`, the rest through
    `MLFLOW_TRACKING_URI` + `MLFLOW_EXPERIMENT_NAME` and the fluent run.
    """

    def __init__(
        self,
        root,
        url: str,
        experiment: str,
        scores: dict[str, list[float | None]],
        registered: str = "",
        env: dict[str, str] | None = None,
    ):
        self.root = os.fspath(root)
        self.url, self.experiment, self.scores, self.registered = url, experiment, scores, registered
        self.extra_env = env or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.returncodes: dict[str, int] = {}
        self.results: dict[str, dict] = {}
        self.go_time: float | None = None  # time.monotonic() when the barrier was released
        self.seconds = 0.0  # from the barrier until the last trainer exited
        self._logs: list = []

    def explicit(self, name: str) -> bool:
        return list(self.scores).index(name) % 2 == 1

    def _env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        env.update(
            MLFLOW_TRACKING_URI=self.url,
            TRACKED_CKPT_CACHE=os.path.join(self.root, "cache"),
            GIT_TERMINAL_PROMPT="0",
            TF_CPP_MIN_LOG_LEVEL="3",
            KERAS_BACKEND="tensorflow",
            # Many processes share few cores: one TensorFlow thread pool each, of one thread.
            TF_NUM_INTRAOP_THREADS="1",
            TF_NUM_INTEROP_THREADS="1",
            OMP_NUM_THREADS="1",
        )
        if not self.explicit(name):
            env["MLFLOW_EXPERIMENT_NAME"] = self.experiment
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 300.0) -> None:
        for name, scores in self.scores.items():
            cfg = {
                "name": name,
                "scores": scores,
                "explicit": self.explicit(name),
                "uri": self.url,
                "experiment": self.experiment,
                "registered": self.registered,
            }
            log = open(os.path.join(self.root, f"{name}.log"), "wb")
            self._logs.append(log)
            self.procs[name] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), json.dumps(cfg)],
                cwd=self.root,
                env=self._env(name),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not all(os.path.exists(os.path.join(self.root, f"{n}.ready")) for n in self.scores):
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead or time.monotonic() > deadline:
                raise AssertionError(f"trainers not ready after {timeout:.0f}s (exited: {dead}):\n{self.tails()}")
            time.sleep(0.05)

    def go(self) -> None:
        self.go_time = time.monotonic()
        open(os.path.join(self.root, "go"), "w").close()

    def wait(self, timeout: float = 300.0) -> None:
        """Wait for every trainer to exit; one still running after `timeout` is stuck: fail, naming it."""
        deadline = self.go_time + timeout
        while len(self.returncodes) < len(self.procs):
            for name, proc in self.procs.items():
                if name not in self.returncodes and proc.poll() is not None:
                    self.returncodes[name] = proc.returncode
            if time.monotonic() > deadline:
                stuck = sorted(set(self.procs) - set(self.returncodes))
                raise AssertionError(f"trainers still running {timeout:.0f}s after the start: {stuck}\n{self.tails()}")
            time.sleep(0.05)
        self.seconds = time.monotonic() - self.go_time

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for log in self._logs:
            log.close()
        self._logs = []
        for name in self.scores:
            path = os.path.join(self.root, f"{name}.json")
            if os.path.exists(path):
                with open(path) as f:
                    self.results[name] = json.load(f)

    def tails(self, limit: int = 1500) -> str:
        out = []
        for name in self.scores:
            path = os.path.join(self.root, f"{name}.log")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    out.append(f"--- {name}.log ---\n{f.read()[-limit:].decode(errors='replace')}")
        return "\n".join(out)

    def __enter__(self) -> TrainerFleet:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
