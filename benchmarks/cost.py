"""Benchmark: CPU seconds per checkpoint, split by who spends them, and the fit-time ratios beside them.

Two real local MLflow servers, both sqlite-backed and on this machine: one
proxying artifacts (the default `mlflow server`), one with `--no-serve-artifacts`
(clients write the store, a local folder here, themselves: "direct store").
Two row kinds, each run in rounds where every variant runs once, back to back,
the order rotated each round (`--rounds`, default 7):

* checkpoint-dominated, like for like (legacy `.h5`, tiny data, 2 steps per
  epoch): plain `ModelCheckpoint`, `TrackedModelCheckpoint` and MLflow's own
  `mlflow.tensorflow.MlflowModelCheckpointCallback` (which writes `.h5`), to each
  server; ours also with the upload thread's lower priority off;
* realistic (`.keras`, about `--epoch-seconds` of training per checkpoint): plain
  `ModelCheckpoint` and `TrackedModelCheckpoint` to each server, lower priority
  on and off.

CPU per checkpoint (thread CPU clocks, so other processes on a shared machine do
not count): Keras's own save, the snapshot (`Spool.stage`), hashing (the upload
thread outside tracker calls), our upload side (inside `log_checkpoint`, on the
upload thread; for MLflow's callback, its hook time on the training thread beyond
the save), the rest of our callback on the training thread, and the server's
processes; all per checkpoint and per 100 MB of checkpoint.

Nothing private is patched: Keras's `Model.save`/`save_weights` and
`Spool.stage` are wrapped with timers, and our callback gets a tracker object
(a timed `MlflowTracker`) through its public `tracker=` argument.

Usage:
    .venv/bin/python benchmarks/cost.py            # ~25 min: 60MB, 7 rounds (part of `make bench`)
    .venv/bin/python benchmarks/cost.py --quick    # ~3 min: 10MB and 2 rounds, a smoke run of every row
    .venv/bin/python benchmarks/cost.py --rows ckpt --rounds 9
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (  # noqa: E402
    HOOKS,
    OUT,
    MlflowServer,
    build_model,
    cpu_snapshot,
    machine_info,
    median,
    other_cpu_between,
    tiny_data,
    versions,
    wait_for_quiet,
)
from instruments import EpochMarker  # noqa: E402
from report import COST_SECTION, local_now, replace_section  # noqa: E402
from targets import target_table  # noqa: E402

os.makedirs(OUT, exist_ok=True)
WORK = tempfile.mkdtemp(prefix="bench-cost-", dir=OUT)
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

import keras  # noqa: E402
import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from tracked_ckpt import TrackedModelCheckpoint  # noqa: E402
from tracked_ckpt.integrations.mlflow import MlflowTracker  # noqa: E402
from tracked_ckpt.settings import UPLOAD_NICENESS as UPLOAD_NICENESS_ENV  # noqa: E402
from tracked_ckpt.spool import Spool  # noqa: E402

logging.getLogger("mlflow").setLevel(logging.ERROR)
logging.getLogger("tracked_ckpt").setLevel(logging.ERROR)
logging.getLogger("absl").setLevel(logging.ERROR)  # the legacy-HDF5 warning of every .h5 save
logging.getLogger("tensorflow").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")

SECTION_START, SECTION_END = COST_SECTION
BATCH = 32
BASELINE = {"ckpt": "keras_h5", "real": "keras"}
# variant -> (callback kind, server, upload-thread niceness setting or None)
CKPT_VARIANTS = {
    "keras_h5": ("keras", None, None),
    "tracked_h5_proxied": ("tracked", "proxied", None),
    "mlflow_cb_proxied": ("mlflow_cb", "proxied", None),
    "tracked_h5_direct": ("tracked", "direct", None),
    "mlflow_cb_direct": ("mlflow_cb", "direct", None),
    "tracked_h5_proxied_nice0": ("tracked", "proxied", "0"),
    "tracked_h5_direct_nice0": ("tracked", "direct", "0"),
}
REAL_VARIANTS = {
    "keras": ("keras", None, None),
    "tracked_proxied": ("tracked", "proxied", None),
    "tracked_direct": ("tracked", "direct", None),
    "tracked_proxied_nice0": ("tracked", "proxied", "0"),
    "tracked_direct_nice0": ("tracked", "direct", "0"),
}


# -- instrumentation (thread CPU clocks) ---------------------------------------------------------------


class Meter:
    """CPU and wall seconds of one run, by part; filled by the wrappers below."""

    current: Meter | None = None

    def __init__(self):
        self.thread = threading.get_ident()
        self.in_hook = 0
        self.hook_cpu = 0.0
        self.save_cpu = self.save_wall = 0.0
        self.saved_bytes = 0
        self.n_saves = 0
        self.stage_cpu = 0.0
        self.call_cpu = 0.0  # inside log_checkpoint, on the upload thread
        self.worker_cpu = 0.0  # the upload thread's whole CPU, read at its last call's end
        self.n_calls = 0


def _install_timers() -> None:
    for name in ("save", "save_weights"):
        original = getattr(keras.Model, name)

        @functools.wraps(original)
        def timed(self, filepath, *args, _original=original, **kwargs):
            meter = Meter.current
            if meter is None or threading.get_ident() != meter.thread or not meter.in_hook:
                return _original(self, filepath, *args, **kwargs)
            c, t = time.thread_time(), time.perf_counter()
            try:
                return _original(self, filepath, *args, **kwargs)
            finally:
                meter.save_cpu += time.thread_time() - c
                meter.save_wall += time.perf_counter() - t
                meter.n_saves += 1
                try:
                    meter.saved_bytes += os.path.getsize(os.fspath(filepath))
                except (OSError, TypeError):
                    pass

        setattr(keras.Model, name, timed)
    original_stage = Spool.stage

    @functools.wraps(original_stage)
    def stage(self, src):
        c = time.thread_time()
        try:
            return original_stage(self, src)
        finally:
            if Meter.current is not None:
                Meter.current.stage_cpu += time.thread_time() - c

    Spool.stage = stage


class TimedMlflowTracker(MlflowTracker):
    """The real MLflow tracker, timing its calls on the upload thread (thread CPU)."""

    def log_checkpoint(self, record, path, destination, *, first_attempt=False):
        start = time.thread_time()
        try:
            return super().log_checkpoint(record, path, destination, first_attempt=first_attempt)
        finally:
            end = time.thread_time()
            meter = Meter.current
            if meter is not None:
                meter.call_cpu += end - start
                meter.worker_cpu = end  # CPU of this thread since it started: hashing and the calls
                meter.n_calls += 1


def instrument(callback, meter: Meter):
    """Time the callback's hooks on the training thread (thread CPU)."""
    for hook in HOOKS:
        original = getattr(callback, hook)

        @functools.wraps(original)
        def wrapped(*args, _original=original, **kwargs):
            meter.in_hook += 1
            c = time.thread_time()
            try:
                return _original(*args, **kwargs)
            finally:
                meter.hook_cpu += time.thread_time() - c
                meter.in_hook -= 1

        setattr(callback, hook, wrapped)
    return callback


# -- the benchmark -----------------------------------------------------------------------------------


class CostBench:
    def __init__(self, args):
        self.args = args
        self.servers: dict[str, MlflowServer] = {}
        self.runs: list[dict] = []
        self.errors: list[str] = []
        self.steps: int | None = None
        self._experiments: dict[tuple[str, str], str] = {}
        self.loads: list[str] = []

    def start(self) -> None:
        os.chdir(WORK)
        for name, serve in (("proxied", True), ("direct", False)):
            server = MlflowServer(os.path.join(WORK, f"server-{name}"), serve_artifacts=serve).start(timeout=300)
            self.servers[name] = server
            log(f"MLflow server ({name}) {server.url} healthy after {server.startup_seconds:.1f} s")
        _install_timers()

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def _experiment(self, server: str, name: str) -> str:
        key = (server, name)
        if key not in self._experiments:
            client = MlflowClient(self.servers[server].url)
            found = client.get_experiment_by_name(name)
            self._experiments[key] = found.experiment_id if found else client.create_experiment(name)
        return self._experiments[key]

    def run_once(self, row: str, variant: str, model, data, epochs: int) -> dict:
        kind, server, nice = (CKPT_VARIANTS if row == "ckpt" else REAL_VARIANTS)[variant]
        x, y, xv, yv = data
        run_dir = tempfile.mkdtemp(prefix=f"{variant}-", dir=WORK)
        ckpt = os.path.join(run_dir, "ckpt-{epoch:02d}." + ("h5" if row == "ckpt" else "keras"))
        meter = Meter()
        if server is not None:
            mlflow.set_tracking_uri(self.servers[server].url)
            mlflow.start_run(experiment_id=self._experiment(server, f"cost-{row}"), run_name=variant)
        if kind == "keras":
            callback = keras.callbacks.ModelCheckpoint(ckpt, monitor="val_loss")
        elif kind == "tracked":
            callback = TrackedModelCheckpoint(ckpt, monitor="val_loss", tracker=TimedMlflowTracker())
        else:
            from mlflow.tensorflow import MlflowModelCheckpointCallback

            callback = MlflowModelCheckpointCallback(
                monitor="val_loss", mode="min", save_best_only=False, save_freq="epoch"
            )
        saved_env = os.environ.get(UPLOAD_NICENESS_ENV)
        if nice is not None:
            os.environ[UPLOAD_NICENESS_ENV] = nice
        marker = EpochMarker()
        self._quiet()
        pgids = [s.proc.pid for s in self.servers.values()]
        snaps0 = [cpu_snapshot(p) for p in pgids]
        cpu0 = time.process_time()
        Meter.current = meter
        try:
            t0 = time.perf_counter()
            model.fit(
                x,
                y,
                validation_data=(xv, yv),
                epochs=epochs,
                batch_size=BATCH,
                verbose=0,
                callbacks=[instrument(callback, meter), marker],
            )
            t1 = time.perf_counter()
        finally:
            Meter.current = None
            cpu1 = time.process_time()
            snaps1 = [cpu_snapshot(p) for p in pgids]
            if saved_env is None:
                os.environ.pop(UPLOAD_NICENESS_ENV, None)
            else:
                os.environ[UPLOAD_NICENESS_ENV] = saved_env
            if server is not None:
                mlflow.end_run()
        server_cpu = {name: b["server"] - a["server"] for name, a, b in zip(self.servers, snaps0, snaps1, strict=False)}
        result = {
            "row": row,
            "variant": variant,
            "kind": kind,
            "server": server,
            "epochs": epochs,
            "fit_s": t1 - t0,
            "to_last_epoch_s": marker.last_epoch_end - t0,
            "process_cpu_s": cpu1 - cpu0,
            "server_cpu_s": server_cpu[server] if server else sum(server_cpu.values()),
            "other_cpu_s": other_cpu_between(snaps0[0], snaps1[0]),  # the servers are in this process tree
            "n_saves": meter.n_saves,
            "saved_mb": meter.saved_bytes / 1e6 / max(1, meter.n_saves),
            "save_cpu_s": meter.save_cpu,
            "save_wall_s": meter.save_wall,
            "hook_cpu_s": meter.hook_cpu,
            "stage_cpu_s": meter.stage_cpu,
            "call_cpu_s": meter.call_cpu,
            "hash_cpu_s": max(0.0, meter.worker_cpu - meter.call_cpu) if meter.n_calls else 0.0,
            "n_calls": meter.n_calls,
        }
        if kind == "tracked":
            report = callback.last_report
            if report is None or not report.ok or len(report.logged) != epochs:
                raise RuntimeError(f"{variant}: logged {len(report.logged) if report else 0} of {epochs}: {report}")
        self._cleanup(run_dir)
        return result

    def _cleanup(self, run_dir: str) -> None:
        shutil.rmtree(run_dir, ignore_errors=True)
        for server in self.servers.values():
            if os.path.isdir(server.artifacts):
                for name in os.listdir(server.artifacts):
                    path = os.path.join(server.artifacts, name)
                    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        os.sync()

    def _quiet(self) -> None:
        wait_for_quiet(None, max_wait=self.args.quiet_wait)

    def rounds(self, row: str, variants: list[str], model, data, epochs: int) -> None:
        for rnd in range(self.args.rounds):
            order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
            for variant in order:
                try:
                    result = self.run_once(row, variant, model, data, epochs)
                except Exception as exc:
                    self.errors.append(f"{row}/{variant} round {rnd + 1}: {type(exc).__name__}: {exc}")
                    log("  ERROR " + self.errors[-1])
                    log(traceback.format_exc(limit=4))
                    continue
                result["round"] = rnd + 1
                self.runs.append(result)
                log(
                    f"  [{rnd + 1}/{self.args.rounds}] {row} {variant:26s} fit {result['fit_s']:6.2f} s  "
                    f"save {result['save_cpu_s']:5.2f}  stage {result['stage_cpu_s']:5.3f}  "
                    f"hash {result['hash_cpu_s']:5.2f}  upload {result['call_cpu_s']:5.2f}  "
                    f"server {result['server_cpu_s']:5.2f} CPU-s  other {result['other_cpu_s']:4.1f}"
                )
            self.loads.append(_loadavg())

    def run(self) -> None:
        size = self.args.size
        if "ckpt" in self.args.rows:
            model = build_model(size)
            data = _data(64)
            model.fit(data[0], data[1], epochs=1, batch_size=BATCH, verbose=0)
            log(f"\n== checkpoint-dominated .h5, {size}: {len(CKPT_VARIANTS)} variants x {self.args.rounds} rounds")
            for variant in CKPT_VARIANTS:  # warm-up, untimed: imports, first requests
                self.run_once("ckpt", variant, model, data, 1)
            self.rounds("ckpt", list(CKPT_VARIANTS), model, data, self.args.epochs)
            del model
            keras.backend.clear_session()
        if "real" in self.args.rows:
            model = build_model(size)
            self.steps = _steps_for(model, self.args.epoch_seconds)
            data = _data(self.steps * BATCH)
            log(
                f"\n== realistic .keras, {size}: {self.steps} steps/epoch (~{self.args.epoch_seconds:.0f} s), "
                f"{len(REAL_VARIANTS)} variants x {self.args.rounds} rounds"
            )
            self.run_once("real", "tracked_proxied", model, _data(64), 1)  # warm-up of the .keras path
            self.rounds("real", list(REAL_VARIANTS), model, data, self.args.realistic_epochs)


def _steps_for(model, seconds: float) -> int:
    probe = 20
    x, y = tiny_data(probe * BATCH, seed=2)
    model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
    t = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
    return max(2, round(seconds / ((time.perf_counter() - t) / probe)))


def _data(n_train: int):
    x, y = tiny_data(n_train, seed=0)
    xv, yv = tiny_data(16, seed=1)
    return x, y, xv, yv


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def log(message: str) -> None:
    print(message, flush=True)


# -- summary -------------------------------------------------------------------------------------------


def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    for row in dict.fromkeys(r["row"] for r in runs):
        base = BASELINE[row]
        by_round = {(r["variant"], r["round"]): r for r in runs if r["row"] == row}
        variants = list(dict.fromkeys(r["variant"] for r in runs if r["row"] == row))
        base_save = [r["save_cpu_s"] / r["epochs"] for r in runs if r["row"] == row and r["variant"] == base]
        table = {}
        for variant in variants:
            rs = [r for r in runs if r["row"] == row and r["variant"] == variant]
            per = lambda key, rs=rs: median([r[key] / r["epochs"] for r in rs])  # noqa: E731  per checkpoint
            mb = median([r["saved_mb"] for r in rs if r["saved_mb"]]) or float("nan")
            kind = rs[0]["kind"]
            save = per("save_cpu_s")
            if kind == "tracked":
                callback_other = median(
                    [(r["hook_cpu_s"] - r["save_cpu_s"] - r["stage_cpu_s"]) / r["epochs"] for r in rs]
                )
                ours = median(
                    [(r["hook_cpu_s"] - r["save_cpu_s"] + r["hash_cpu_s"] + r["call_cpu_s"]) / r["epochs"] for r in rs]
                )
                upload = per("call_cpu_s")
            elif kind == "mlflow_cb":  # its upload runs inside its hook, on the training thread
                callback_other = 0.0
                upload = median([(r["hook_cpu_s"] - r["save_cpu_s"]) / r["epochs"] for r in rs])
                ours = upload
            else:
                callback_other = upload = ours = 0.0
            ratios = [
                by_round[(variant, rnd)]["fit_s"] / by_round[(base, rnd)]["fit_s"]
                for rnd in sorted({r["round"] for r in rs})
                if (base, rnd) in by_round
            ]
            table[variant] = {
                "n": len(rs),
                "kind": kind,
                "mb": mb,
                "fit_s": median([r["fit_s"] for r in rs]),
                "ratios": ratios,
                "ratio": median(ratios) if ratios else None,
                "save_cpu": save,
                "stage_cpu": per("stage_cpu_s"),
                "hash_cpu": per("hash_cpu_s"),
                "upload_cpu": upload,
                "callback_other_cpu": callback_other,
                "ours_cpu": ours,
                "server_cpu": per("server_cpu_s"),
                "process_cpu": per("process_cpu_s"),
                "other_cpu_s": median([r["other_cpu_s"] for r in rs]),
                "other_cpu_max": max(r["other_cpu_s"] for r in rs),
                "ours_over_save": ours / save if save > 0 else None,
                "ours_over_plain_save": ours / median(base_save) if base_save and median(base_save) > 0 else None,
            }
        out[row] = table
    return out


def verdicts(summary: dict) -> list[tuple[str, str, str]]:
    out = []

    def ratio_target(row, variant, limit, label):
        r = summary.get(row, {}).get(variant)
        if not r or r["ratio"] is None:
            out.append((label, "not measured", ""))
            return
        ok = r["ratio"] <= limit
        out.append(
            (
                label,
                "met" if ok else f"missed by {100 * (r['ratio'] - limit):.1f} points",
                f"median of {len(r['ratios'])} per-round ratios {r['ratio']:.3f}× "
                f"({', '.join(f'{x:.2f}' for x in r['ratios'])})",
            )
        )

    ratio_target("real", "tracked_direct", 1.03, "realistic, direct-store server: ≤ 1.03× plain ModelCheckpoint")
    ratio_target("real", "tracked_proxied", 1.05, "realistic, proxied server: ≤ 1.05× plain ModelCheckpoint")
    for server in ("proxied", "direct"):
        ours = summary.get("ckpt", {}).get(f"tracked_h5_{server}")
        theirs = summary.get("ckpt", {}).get(f"mlflow_cb_{server}")
        label = f"checkpoint-dominated .h5, {server} server: no slower than MLflow's own callback"
        if not ours or not theirs or ours["ratio"] is None or theirs["ratio"] is None:
            out.append((label, "not measured", ""))
            continue
        ok = ours["ratio"] <= theirs["ratio"]
        out.append(
            (
                label,
                "met" if ok else f"missed by {100 * (ours['ratio'] - theirs['ratio']):.1f} points",
                f"ours {ours['ratio']:.2f}× vs MLflow's {theirs['ratio']:.2f}× plain (medians of per-round "
                f"ratios; ours {', '.join(f'{x:.2f}' for x in ours['ratios'])}; MLflow's "
                f"{', '.join(f'{x:.2f}' for x in theirs['ratios'])})",
            )
        )
    for row, table in summary.items():
        for variant, r in table.items():
            if r["kind"] != "tracked" or variant.endswith("nice0") or r["ours_over_save"] is None:
                continue
            ok = r["ours_over_save"] <= 0.3
            out.append(
                (
                    f"our extra CPU per checkpoint ≤ 0.3× Keras's save, {row} {variant}",
                    "met" if ok else f"missed ({r['ours_over_save']:.2f}×)",
                    f"{r['ours_cpu']:.3f} CPU-s (snapshot {r['stage_cpu']:.3f}, hash {r['hash_cpu']:.3f}, upload "
                    f"{r['upload_cpu']:.3f}, rest of the callback {r['callback_other_cpu']:.3f}) vs save "
                    f"{r['save_cpu']:.3f} CPU-s: {r['ours_over_save']:.2f}×; server {r['server_cpu']:.3f} CPU-s",
                )
            )
    return out


def render(summary: dict, args, bench: CostBench, started: str, elapsed: float) -> str:
    lines = [
        SECTION_START,
        "## CPU per checkpoint, by part (`benchmarks/cost.py`)",
        "",
        f"Generated on {started} in {elapsed / 60:.1f} min: "
        f"`{' '.join(['.venv/bin/python', 'benchmarks/cost.py', *sys.argv[1:]])}`; "
        f"{args.rounds} rounds, each variant once per round (order rotated); load average before and after each "
        f"round: {', '.join(bench.loads) or '–'}. Both servers sqlite-backed, on this machine, one with proxied "
        "artifacts, one `--no-serve-artifacts` (clients write the local store themselves). *CPU* columns are "
        "thread CPU seconds per checkpoint (and per 100 MB of checkpoint in brackets): *save* = Keras's own "
        "`Model.save`; *snapshot* = `Spool.stage`; *hash* = the upload thread outside tracker calls (sha256, "
        "manifests); *upload* = inside `log_checkpoint` on the upload thread (for MLflow's callback: its hook "
        "time beyond the save, on the training thread); *rest* = the rest of our callback on the training "
        "thread; *ours/save* = (snapshot + hash + upload + rest) / save; *server* = the server's processes. "
        "*× plain* = median of per-round fit ratios to plain `ModelCheckpoint`; *other* = CPU of other processes "
        "on the machine during the fit (median, max): the machine is shared.",
        "",
    ]

    def cell(value, mb):
        return "–" if not value else f"{value:.3f} ({100 * value / mb:.3f})" if mb and mb == mb else f"{value:.3f}"

    for row, table in summary.items():
        title = (
            "Checkpoint-dominated, like for like: legacy `.h5`, 2 steps per epoch"
            if row == "ckpt"
            else f"Realistic: `.keras`, {bench.steps} steps per epoch (about {args.epoch_seconds:.0f} s of training "
            "per checkpoint)"
        )
        mb = next(iter(table.values()))["mb"]
        lines += [
            f"### {title}, {args.size} (file {mb:.1f} MB)",
            "",
            "| variant | fit s | × plain (per round) | save CPU | snapshot | hash | upload | rest | ours/save | "
            "server CPU | process CPU | other CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for variant, r in table.items():
            ratio = (
                "–"
                if r["ratio"] is None or r["kind"] == "keras"
                else (f"**{r['ratio']:.3f}** ({', '.join(f'{x:.2f}' for x in r['ratios'])})")
            )
            share = "–" if r["kind"] == "keras" or r["ours_over_save"] is None else f"{r['ours_over_save']:.2f}"
            lines.append(
                f"| {variant} | {r['fit_s']:.2f} | {ratio} | {cell(r['save_cpu'], r['mb'])} | "
                f"{cell(r['stage_cpu'], r['mb'])} | {cell(r['hash_cpu'], r['mb'])} | "
                f"{cell(r['upload_cpu'], r['mb'])} | "
                f"{cell(r['callback_other_cpu'], r['mb'])} | {share} | {cell(r['server_cpu'], r['mb'])} | "
                f"{r['process_cpu']:.2f} | {r['other_cpu_s']:.1f} ({r['other_cpu_max']:.1f}) |"
            )
        lines.append("")
    lines += ["### Targets of issue 22 measured here", "", *target_table(verdicts(summary))]
    if bench.errors:
        lines += ["", "Errors (runs excluded): " + "; ".join(bench.errors)]
    lines += ["", SECTION_END]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10MB, 2 rounds, 2 epochs of ~2 s: a smoke run (~3 min)")
    parser.add_argument("--size", help="checkpoint size (default 60MB; --quick: 10MB)")
    parser.add_argument("--rows", default="ckpt,real", help="ckpt (checkpoint-dominated .h5), real (realistic .keras)")
    parser.add_argument("--rounds", type=int, help="rounds of every variant (default 7; --quick 2)")
    parser.add_argument("--epochs", type=int, help="checkpoints per checkpoint-dominated fit (default 4)")
    parser.add_argument("--realistic-epochs", type=int, help="checkpoints per realistic fit (default 4)")
    parser.add_argument("--epoch-seconds", type=float, help="training seconds per realistic epoch (default 4)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="seconds at most to wait before each run for other processes to go quiet (default 5)",
    )
    parser.add_argument(
        "--results",
        help="markdown file whose cost section is rewritten (default "
        "benchmarks/RESULTS.md; --quick: out/RESULTS-quick.md)",
    )
    args = parser.parse_args(argv)
    args.size = args.size or ("10MB" if args.quick else "60MB")
    args.rounds = args.rounds or (2 if args.quick else 7)
    args.epochs = args.epochs or (2 if args.quick else 4)
    args.realistic_epochs = args.realistic_epochs or (2 if args.quick else 4)
    args.epoch_seconds = args.epoch_seconds or (2.0 if args.quick else 4.0)
    args.rows = args.rows.split(",")
    results = args.results or (
        os.path.join(OUT, "RESULTS-quick.md") if args.quick else os.path.join(HERE, "RESULTS.md")
    )
    started = local_now()
    t0 = time.monotonic()
    bench = CostBench(args)
    try:
        log(f"work dir {WORK}; load {_loadavg()}")
        bench.loads.append(_loadavg())
        bench.start()
        bench.run()
    finally:
        bench.stop()
        shutil.rmtree(WORK, ignore_errors=True)
    summary = summarize(bench.runs)
    elapsed = time.monotonic() - t0
    raw = os.path.join(OUT, f"cost-{time.strftime('%Y%m%dT%H%M%S')}.json")
    with open(raw, "w") as f:
        json.dump(
            {
                "args": vars(args),
                "runs": bench.runs,
                "summary": summary,
                "errors": bench.errors,
                "loads": bench.loads,
                "machine": machine_info(),
                "versions": versions(),
                "started": started,
                "elapsed_s": elapsed,
            },
            f,
            indent=1,
            default=str,
        )
    text = render(summary, args, bench, started, elapsed)
    replace_section(results, text, SECTION_START, SECTION_END)
    print(text)
    log(f"\nwrote {results} and {raw}; {elapsed / 60:.1f} min")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
