"""Benchmark: what logging every checkpoint costs a Keras `fit`.

One process, one real local `mlflow server` (sqlite backend, proxied artifacts,
1 worker, job runner off). For each model size, the variants run round-robin
(run 1 of every variant, then run 2 of every variant, with the order rotated
each round), `--repeats` times. Each run is one short `fit` (tiny data, 2
batches per epoch, `--epochs` epochs, one checkpoint per epoch) so saving and
logging dominate. Measured per run:

* fit wall time (`model.fit` call), and the time to the end of the last epoch
  (a marker callback placed after the checkpoint callback); the difference is
  mostly `on_train_end`, where async uploads are waited for;
* the training thread's time inside the checkpoint callback (its hooks are
  wrapped with timers), and inside Keras's own `Model.save`/`save_weights`
  during those hooks, hence the callback's extra time per checkpoint;
* process CPU time, and the MLflow server's CPU time, during the fit.

Runs are then followed by the scaling figures (`benchmarks/scaling.py`).
Results go to stdout and to `benchmarks/RESULTS.md` (`--quick` writes
`benchmarks/out/RESULTS-quick.md` unless `--results` is given); raw numbers to
`benchmarks/out/results-<time>.json`.

Usage:
    make bench                                   # default: 10MB,60MB,250MB x 5 repeats, 4 epochs
    .venv/bin/python benchmarks/run.py --quick   # 10MB,60MB x 2 repeats, 3 epochs, 200 checkpoints
    .venv/bin/python benchmarks/run.py --sizes 60MB --repeats 5 --variants keras,tracked_async_server
"""

# The command line: which sizes, variants and rows to run, then the raw JSON and RESULTS.md. The work is
# done by measure.py (the fits), summary.py (the table), targets.py (the verdicts), report.py (Markdown).

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import OUT, SIZES, machine_info, versions  # noqa: E402
from measure import T_START, WORK, Bench, log  # noqa: E402  (makes WORK and points W&B at it)
from report import local_now, print_summary, write_results  # noqa: E402
from summary import summarize, summarize_realistic  # noqa: E402
from targets import evaluate_targets  # noqa: E402
from variants import BASELINE, VARIANTS  # noqa: E402


def render_only(raw_path: str, results_path: str | None) -> int:
    """Re-write RESULTS.md from a raw JSON of an earlier run (e.g. after editing NOTES.md)."""
    with open(raw_path) as f:
        raw = json.load(f)
    args = argparse.Namespace(**raw["args"])
    meta = raw.get("meta", {})
    argv = sys.argv
    sys.argv = [argv[0], *meta.get("argv", [])]
    try:
        write_results(
            results_path or args.results_path,
            args,
            raw["table"],
            raw["scaling"],
            raw["skipped"],
            raw["errors"],
            raw["file_mb"],
            raw["elapsed_s"],
            meta.get("server_startup", 0.0),
            meta.get("quiet_waited", 0.0),
            meta.get("cut", {}),
            generated=meta.get("generated"),
            via_make=meta.get("via_make", False),
            machine=raw.get("machine"),
            vers=raw.get("versions"),
            realistic=raw.get("realistic"),
        )
    finally:
        sys.argv = argv
    print(f"wrote {results_path or args.results_path} from {raw_path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--render-only",
        metavar="RAW_JSON",
        help="only re-write the markdown from benchmarks/out/results-*.json of an earlier run",
    )
    parser.add_argument(
        "--quick", action="store_true", help="sizes 10MB,60MB, 2 repeats, 3 epochs, 200 checkpoints for promote_best"
    )
    parser.add_argument("--sizes", help=f"comma-separated, from {','.join(SIZES)} (default: all)")
    parser.add_argument("--repeats", type=int, help="runs per variant and size (default 5)")
    parser.add_argument("--epochs", type=int, help="epochs (= checkpoints) per fit (default 4)")
    parser.add_argument("--variants", help="comma-separated subset of: " + ",".join(v for v, _ in VARIANTS))
    parser.add_argument("--scaling-n", type=int, help="checkpoints in the big promote_best run (default 1000)")
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="minutes: at the largest size, repeats beyond 2 are dropped when the whole run would "
        "exceed this (default 30)",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        default=60.0,
        help="total seconds the runs may wait for other processes on the machine to go quiet (default 60)",
    )
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling figures")
    parser.add_argument(
        "--realistic-sizes",
        default="60MB,250MB",
        help="sizes of the realistic rows (several seconds of training per checkpoint); "
        "'' to skip them (default 60MB,250MB; --quick: 60MB)",
    )
    parser.add_argument("--pairs", type=int, default=5, help="alternating pairs per realistic row (default 5)")
    parser.add_argument(
        "--epoch-seconds",
        type=float,
        default=5.0,
        help="training seconds per epoch (= per checkpoint) in the realistic rows (default 5)",
    )
    parser.add_argument("--realistic-epochs", type=int, default=4, help="epochs of a realistic run (default 4)")
    parser.add_argument(
        "--results", help="markdown output (default benchmarks/RESULTS.md; --quick: out/RESULTS-quick.md)"
    )
    args = parser.parse_args(argv)
    if args.render_only:
        shutil.rmtree(WORK, ignore_errors=True)  # made at import; nothing runs
        return render_only(args.render_only, args.results)
    quick = args.quick
    args.sizes = (args.sizes or ("10MB,60MB" if quick else ",".join(SIZES))).split(",")
    unknown = [s for s in args.sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    args.repeats = args.repeats or (2 if quick else 5)
    if quick and args.realistic_sizes == "60MB,250MB":
        args.realistic_sizes = "60MB"
    args.realistic_sizes = [s for s in args.realistic_sizes.split(",") if s]
    unknown = [s for s in args.realistic_sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown realistic sizes {unknown}; choose from {list(SIZES)}")
    args.epochs = args.epochs or (3 if quick else 4)
    args.variants = args.variants.split(",") if args.variants else [v for v, _ in VARIANTS]
    if BASELINE not in args.variants:
        args.variants.append(BASELINE)
    args.scaling_n = args.scaling_n or (200 if quick else 1000)
    results_path = args.results or (
        os.path.join(OUT, "RESULTS-quick.md") if quick else os.path.join(HERE, "RESULTS.md")
    )
    args.results_path = results_path

    bench = Bench(args)
    try:
        return _run(bench, args, results_path)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


def _run(bench: Bench, args, results_path: str) -> int:
    scaling = None
    try:
        log(f"work dir {WORK}")
        bench.start()
        log("warm-up (untimed):")
        bench.warm_up()
        bench.run()
        bench.run_realistic()
        if not args.no_scaling:
            log(f"\n== scaling (promote_best over 10 vs {args.scaling_n} checkpoints, load_model, memory)")
            from scaling import run_scaling

            t = time.perf_counter()
            scaling = run_scaling(
                bench.server.url, os.path.join(WORK, "scaling"), n_big=args.scaling_n, sizes=tuple(args.sizes), log=log
            )
            log(f"  scaling took {time.perf_counter() - t:.0f} s")
    finally:
        bench.stop()
    table = summarize(bench.runs, args.sizes, bench.variants())
    realistic = summarize_realistic(bench.realistic_runs)
    elapsed = time.monotonic() - T_START
    print_summary(table, bench.skipped)
    raw = os.path.join(OUT, f"results-{time.strftime('%Y%m%dT%H%M%S')}.json")
    with open(raw, "w") as f:
        json.dump(
            {
                "args": vars(args),
                "runs": bench.runs,
                "table": table,
                "scaling": scaling,
                "realistic_runs": bench.realistic_runs,
                "realistic": realistic,
                "skipped": bench.skipped,
                "errors": bench.errors,
                "file_mb": bench.file_mb,
                "machine": machine_info(),
                "versions": versions(),
                "elapsed_s": elapsed,
                "meta": {
                    "argv": sys.argv[1:],
                    "server_startup": bench.server.startup_seconds or 0.0,
                    "quiet_waited": bench.quiet_waited,
                    "cut": bench.cut,
                    "generated": local_now(),
                    "via_make": bool(os.environ.get("MAKELEVEL")),
                },
            },
            f,
            indent=1,
            default=str,
        )
    write_results(
        results_path,
        args,
        table,
        scaling,
        bench.skipped,
        bench.errors,
        bench.file_mb,
        elapsed,
        bench.server.startup_seconds or 0.0,
        bench.quiet_waited,
        bench.cut,
        realistic=realistic,
    )
    for target, verdict, figures in evaluate_targets(table, scaling, realistic):
        print(f"TARGET {target}: {verdict} — {figures}")
    log(f"\nwrote {results_path} and {raw}; total {elapsed / 60:.1f} min")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
