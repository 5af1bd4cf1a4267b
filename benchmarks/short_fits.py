"""Benchmark: the fixed cost per fit of `TrackedModelCheckpoint`, over many short trials in one process.

A sweep in one process (KerasTuner, an HPO study) runs many short fits. Each fit
with our callback pays a fixed cost over plain `ModelCheckpoint`: starting its run
(reachability probe, experiment, run creation, provenance), and at the end waiting
for the last upload and ending the run. This measures it against a real local
`mlflow server`: `--pairs` alternating pairs (which variant runs first alternates)
of two-epoch fits of a small model, after a warm-up fit of each, and reports
medians of the per-pair differences, with CPU seconds (this process and the
server) beside wall time. The tracked fit's time is split into `on_train_begin`
(set-up), `on_train_end` (the wait for the last upload and the end of the run)
and the rest (the training thread's part of each save).

Usage:
    .venv/bin/python benchmarks/short_fits.py              # 24 pairs (run by `make bench`)
    .venv/bin/python benchmarks/short_fits.py --pairs 8    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import OUT, MlflowServer, cpu_snapshot, machine_info, versions  # noqa: E402
from report import replace_section  # noqa: E402

from tracked_ckpt import TrackedModelCheckpoint  # noqa: E402
from tracked_ckpt.integrations.mlflow import MlflowTracker  # noqa: E402


def small_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)], name="trial"
    )
    model.compile(optimizer="adam", loss="mse")
    return model


class HookTimer(keras.callbacks.Callback):
    """Times our callback's begin and end hooks by sitting right before and after it in the list."""

    def __init__(self, marks: dict, prefix: str):
        super().__init__()
        self.marks, self.prefix = marks, prefix

    def on_train_begin(self, logs=None):
        self.marks[self.prefix + "begin"] = time.perf_counter()

    def on_train_end(self, logs=None):
        self.marks[self.prefix + "end"] = time.perf_counter()


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_fit(variant: str, folder: str, tracking_uri: str, server_pgid: int) -> dict:
    x = np.random.default_rng(0).random((64, 16), dtype="float32")
    y = x.sum(axis=1, keepdims=True)
    model = small_model()
    path = os.path.join(folder, variant, "trial-{epoch}.keras")
    if variant == "tracked":
        checkpoint = TrackedModelCheckpoint(
            path, monitor="loss", tracker=MlflowTracker(tracking_uri=tracking_uri, experiment="short-fits")
        )
    else:
        checkpoint = keras.callbacks.ModelCheckpoint(path, monitor="loss")
    marks: dict = {}
    callbacks = [HookTimer(marks, "a_"), checkpoint, HookTimer(marks, "b_")]
    cpu_before, snap_before = process_cpu(), cpu_snapshot(server_pgid)
    started = time.perf_counter()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=callbacks)
    wall = time.perf_counter() - started
    snap_after = cpu_snapshot(server_pgid)
    figures = {
        "wall": wall,
        "cpu": process_cpu() - cpu_before,
        "server_cpu": snap_after["server"] - snap_before["server"],
        "begin": marks["b_begin"] - marks["a_begin"],  # callbacks run in list order
        "end": marks["b_end"] - marks["a_end"],
    }
    if variant == "tracked":
        assert checkpoint.last_report is not None and checkpoint.last_report.ok, checkpoint.last_report
    return figures


SECTION_START = "<!-- short-fits:start -->"
SECTION_END = "<!-- short-fits:end -->"


def render(summary: dict) -> str:
    """The RESULTS.md section of this benchmark."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return "\n".join(
        [
            SECTION_START,
            "## Many short trials in one process (benchmarks/short_fits.py)",
            "",
            f"{summary['pairs']} alternating pairs of two-epoch fits of a small model (plain `ModelCheckpoint` vs "
            "`TrackedModelCheckpoint` to a local `mlflow server`), one process, measured "
            f"{when}, load average {summary['load_average'][0]:.2f}. Medians of the per-pair differences:",
            "",
            "| | ms per fit |",
            "|---|---|",
            f"| plain fit | {summary['plain_wall_s'] * 1000:.0f} |",
            f"| tracked fit | {summary['tracked_wall_s'] * 1000:.0f} (x{summary['ratio']:.2f}) |",
            f"| **fixed cost per fit** | **{summary['extra_wall_ms']:.0f}** |",
            f"| of it: set-up (`on_train_begin`: run, provenance) | {summary['extra_begin_ms']:.0f} |",
            f"| of it: end (wait for the last upload, end of run) | {summary['extra_end_ms']:.0f} |",
            f"| of it: the rest (two saves staged and queued) | {summary['extra_rest_ms']:.0f} |",
            f"| CPU, this process (extra) | {summary['extra_cpu_ms']:.0f} |",
            f"| CPU, the MLflow server | {summary['server_cpu_ms']:.0f} |",
            "",
            SECTION_END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=24, help="alternating pairs (default 24)")
    parser.add_argument("--out", default=os.path.join(OUT, "short_fits.json"))
    parser.add_argument(
        "--results",
        default=os.path.join(HERE, "RESULTS.md"),
        help="markdown file whose short-fits section is replaced (default benchmarks/RESULTS.md)",
    )
    args = parser.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    root = tempfile.mkdtemp(prefix="short-fits-")
    with MlflowServer(os.path.join(root, "server")) as server:
        server_pgid = os.getpgid(server.proc.pid)
        for variant in ("plain", "tracked"):  # warm both: imports, graph tracing, the server's first requests
            one_fit(variant, root, server.url, server_pgid)
        pairs = []
        for i in range(args.pairs):
            order = ("plain", "tracked") if i % 2 == 0 else ("tracked", "plain")
            pair = {variant: one_fit(variant, root, server.url, server_pgid) for variant in order}
            pairs.append(pair)
            print(
                f"pair {i + 1}/{args.pairs}: plain {pair['plain']['wall']:.3f}s, "
                f"tracked {pair['tracked']['wall']:.3f}s "
                f"(begin {pair['tracked']['begin'] * 1000:.0f} ms, end {pair['tracked']['end'] * 1000:.0f} ms)",
                flush=True,
            )

    def med(key: str, variant: str = "tracked") -> float:
        return statistics.median(p[variant][key] for p in pairs)

    def med_diff(key: str) -> float:
        return statistics.median(p["tracked"][key] - p["plain"][key] for p in pairs)

    summary = {
        "pairs": args.pairs,
        "plain_wall_s": med("wall", "plain"),
        "tracked_wall_s": med("wall"),
        "extra_wall_ms": 1000 * med_diff("wall"),
        "extra_begin_ms": 1000 * med_diff("begin"),
        "extra_end_ms": 1000 * med_diff("end"),
        "extra_rest_ms": 1000 * (med_diff("wall") - med_diff("begin") - med_diff("end")),
        "extra_cpu_ms": 1000 * med_diff("cpu"),
        "server_cpu_ms": 1000 * med("server_cpu"),
        "ratio": statistics.median(p["tracked"]["wall"] / p["plain"]["wall"] for p in pairs),
        "load_average": os.getloadavg(),
        "machine": machine_info(),
        "versions": versions(),
    }
    with open(args.out, "w") as f:
        json.dump({"summary": summary, "pairs": pairs}, f, indent=1)
    replace_section(args.results, render(summary), SECTION_START, SECTION_END)
    print(
        f"\nMany short trials in one process: {args.pairs} pairs of two-epoch fits, medians of per-pair differences\n"
        f"  plain fit {summary['plain_wall_s'] * 1000:.0f} ms, tracked {summary['tracked_wall_s'] * 1000:.0f} ms "
        f"(x{summary['ratio']:.2f}); fixed cost per fit {summary['extra_wall_ms']:.0f} ms wall:\n"
        f"    set-up (on_train_begin)          {summary['extra_begin_ms']:6.0f} ms\n"
        f"    end (last upload, end of run)    {summary['extra_end_ms']:6.0f} ms\n"
        f"    the rest (two saves' staging)    {summary['extra_rest_ms']:6.0f} ms\n"
        f"  CPU: this process +{summary['extra_cpu_ms']:.0f} ms, the server {summary['server_cpu_ms']:.0f} ms per fit; "
        f"load average {summary['load_average'][0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
