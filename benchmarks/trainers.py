"""Many trainers on the production-shaped stack, and a multipart upload's memory.

Stack (tests/support/production_stack.py): `mlflow server` (2 workers) on a private
PostgreSQL cluster, artifacts proxied to an S3 bucket served by moto, all on
this machine.

1. Trainers: 1, 4 and 16 concurrent trainer processes (tests/support/sweep_trainer.py:
   a tiny Keras model, one checkpoint an epoch, `TrackedModelCheckpoint` with
   async upload), released together behind a barrier. Per configuration:
   checkpoints logged per second (all checkpoints / time from the barrier to the
   last `fit` returning, i.e. to the last upload confirmed), the CPU seconds per
   checkpoint of the MLflow server's processes, of PostgreSQL, of moto and of the
   trainers themselves, and the CPU used by everything else on the machine. The
   configurations alternate round by round (order rotated), `--repeats` rounds;
   medians are reported. After each run the experiment is checked: one READY
   LoggedModel per checkpoint.
2. Multipart: one checkpoint fit in this process against the same stack with
   `MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true` and low thresholds, next to the
   default (single proxied PUT); RSS of the training process sampled every 2 ms
   while the publisher hashes and uploads (benchmarks/scaling.py's measurement),
   and the S3 object's part count read back from the bucket (its ETag).

Run: `.venv/bin/python benchmarks/trainers.py [--repeats 3] [--trainers 1,4,16] [--epochs 10]
[--sizes 60MB,250MB]` (also the second step of `make bench`); `--render-only out/trainers-<time>.json`
rewrites the section from the raw numbers of an earlier run. The tables replace the
"Many trainers" section of benchmarks/RESULTS.md (`--results` to write elsewhere).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import OUT, REPO, machine_busy_seconds, machine_info, median, other_cpu_between, versions  # noqa: E402
from report import TRAINERS_SECTION, local_now, replace_section  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "tests"))
from support.production_stack import ARTIFACT_PREFIX, ProductionStack  # noqa: E402
from support.sweep_trainer import TrainerFleet  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")
SECTION_START, SECTION_END = TRAINERS_SECTION
MULTIPART_CHUNK = 16 * 1024**2  # S3 parts must be >= 5 MiB (but the last)


def _tree_cpu(root: int | None) -> float:
    """CPU seconds of process `root` and its descendants, including the exited ones it reaped.

    PostgreSQL backends end with their connections, and uvicorn replaces workers that miss a
    health check: their CPU is in the parent's cutime/cstime once reaped, so each process
    counts utime + stime + cutime + cstime (a live child's time is never in its parent's).
    """
    if root is None:
        return 0.0
    table: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / _TICK)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1]
        todo.extend(children.get(pid, []))
    return total


def _parts(stack: ProductionStack) -> dict[str, int | None]:
    return {
        "server": stack.server.proc.pid,
        "postgres": stack.postgres.postmaster_pid(),
        "moto": stack.s3.proc.pid,
    }


def run_trainers(stack: ProductionStack, n: int, epochs: int, workdir: str) -> dict:
    """One configuration: `n` trainers of `epochs` checkpoints each; returns its figures."""
    import mlflow
    from mlflow.entities import LoggedModelStatus

    root = tempfile.mkdtemp(prefix=f"trainers-{n}-", dir=workdir)
    experiment = f"bench-trainers-{n}-{uuid.uuid4().hex[:8]}"
    scores = {f"t{i:02d}": [round(1.0 / (1 + e + i), 4) for e in range(epochs)] for i in range(n)}
    pids = _parts(stack)
    with TrainerFleet(root, stack.url, experiment, scores) as fleet:
        fleet.start(timeout=600)
        before = {name: _tree_cpu(pid) for name, pid in pids.items()}
        snap = {"machine": machine_busy_seconds(), "tree": _tree_cpu(os.getpid())}
        go_wall = time.time()
        fleet.go()
        fleet.wait(timeout=900)
        after = {name: _tree_cpu(pid) for name, pid in pids.items()}
        snap_after = {"machine": machine_busy_seconds(), "tree": _tree_cpu(os.getpid())}
        window = time.time() - go_wall  # to the last trainer's exit: the window of the CPU figures
    failed = {k: v for k, v in fleet.returncodes.items() if v != 0}
    if failed or len(fleet.results) != n:
        raise RuntimeError(f"trainers failed {failed}:\n{fleet.tails()}")
    checkpoints = n * epochs
    last_logged = max(r["fit_done"] for r in fleet.results.values())
    seconds = last_logged - go_wall
    client = mlflow.MlflowClient(stack.url)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    models = client.search_logged_models([experiment_id], max_results=10 * checkpoints)
    ready = sum(m.status == LoggedModelStatus.READY for m in models)
    trainers_cpu = sum(r["cpu_fit_done"] - r["cpu_before_go"] for r in fleet.results.values())
    shutil.rmtree(root, ignore_errors=True)
    return {
        "trainers": n,
        "checkpoints": checkpoints,
        "seconds": seconds,
        "per_second": checkpoints / seconds,
        "server_cpu_per_ckpt": (after["server"] - before["server"]) / checkpoints,
        "postgres_cpu_per_ckpt": (after["postgres"] - before["postgres"]) / checkpoints,
        "moto_cpu_per_ckpt": (after["moto"] - before["moto"]) / checkpoints,
        "trainer_cpu_per_ckpt": trainers_cpu / checkpoints,
        "other_cpu": other_cpu_between(snap, snap_after),
        "window_s": window,
        "models": len(models),
        "ready": ready,
        "exactly_once": len(models) == ready == checkpoints,
    }


def measure_multipart(stack: ProductionStack, size: str, multipart: bool, workdir: str) -> dict:
    """Fit one epoch of a `size` model in this process, uploading to the stack; RSS and S3 parts."""
    import mlflow
    from scaling import measure_upload_memory

    from tracked_ckpt.integrations.mlflow import MlflowTracker

    env = {
        "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true" if multipart else "false",
        "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(MULTIPART_CHUNK),
        "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": str(MULTIPART_CHUNK),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        experiment = f"bench-multipart-{uuid.uuid4().hex[:8]}"
        tracker = MlflowTracker(tracking_uri=stack.url, experiment=experiment)
        figures = measure_upload_memory(size, tracker, workdir)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    client = mlflow.MlflowClient(stack.url)
    (model,) = client.search_logged_models(
        [client.get_experiment_by_name(experiment).experiment_id],
        filter_string=f"source_run_id = '{figures['run_id']}'",
    )
    key = f"{ARTIFACT_PREFIX}/{model.artifact_location.split('mlflow-artifacts:/', 1)[1]}/data/model.keras"
    etag = stack.s3.client().head_object(Bucket=stack.s3.bucket, Key=key)["ETag"].strip('"')
    figures.update(size=size, multipart=multipart, s3_parts=int(etag.split("-")[1]) if "-" in etag else 1)
    return figures


# -- rendering -----------------------------------------------------------------------------------------


def _load_sentence(busy: float, nproc: int) -> str:
    """How much the rest of the machine used while this ran: the figures are only as good as that."""
    if busy < 0.2:
        return (
            f"Nothing else ran meanwhile (the rest of the machine used at most {busy:.2f} of the {nproc} CPUs in "
            "a run's window: the *other CPU* column). "
        )
    return (
        f"**Other work ran meanwhile** (up to {busy:.1f} of the {nproc} CPUs in a run's window: the *other CPU* "
        "column), so absolute figures are noisy. "
    )


def render(raw: dict) -> str:
    args = raw["args"]
    busy = max((r["other_cpu"] / r.get("window_s", r["seconds"]) for r in raw["trainers"]), default=0.0)
    other_ok = raw.get("other_cpu_counts_reaped", False)
    lines = [
        SECTION_START,
        "## Many trainers on PostgreSQL + S3",
        "",
        f"Generated by `benchmarks/trainers.py` on {raw['generated']} ({raw['elapsed_min']:.1f} min): "
        f"`mlflow server` ({raw['workers']} workers) on a private PostgreSQL cluster, artifacts proxied to a moto S3 "
        "bucket, and every trainer, all on this one "
        f"{raw['machine']['nproc']}-CPU machine. "
        + (
            _load_sentence(busy, raw["machine"]["nproc"])
            if other_ok
            else "**The machine was shared with other sessions running their test suites during the measurement, so "
            "absolute figures are noisy** (the load average stayed between 13 and 30 on these 2 CPUs). "
        )
        + f"{raw['rounds']} rounds (fewer than the 5 pairs our other benchmarks use: a round of "
        f"{' + '.join(str(n) for n in args['trainers'])} trainers took about "
        f"{raw['elapsed_min'] / max(raw['rounds'], 1):.0f} min "
        "here), configurations alternated (order rotated each round), medians (min–max).",
        "",
        "Each trainer: its own process (tests/support/sweep_trainer.py), a tiny Keras model, "
        f"{args['epochs']} epochs, one checkpoint (~22 KB `.keras`) per epoch, `TrackedModelCheckpoint` with async "
        "upload, released together behind "
        "a barrier after their imports. *checkpoints/s* = all checkpoints / time from the barrier to the last `fit` "
        "returning (each `fit` returns once its uploads are confirmed). CPU columns are seconds per checkpoint, "
        "from the barrier to the last trainer's exit: the MLflow server's processes, PostgreSQL, "
        "moto (the S3 server), and the trainer "
        "processes (training included). *exactly once* = the experiment holds one READY LoggedModel per checkpoint "
        "after every round.",
        "",
        "Reading it: each checkpoint costs about 9 HTTP requests to the server (create, 5 artifact PUTs that the "
        "server writes on to S3 with boto3, metrics, run output, finalize; `benchmarks/count_requests.py` counts "
        "them), so the "
        "server's CPU per checkpoint, not PostgreSQL, bounds throughput, and on 2 cores the trainers and the server "
        "compete for the same CPUs: more trainers raise checkpoints/s only while the server has idle CPU.",
        "",
        "| trainers | checkpoints | checkpoints/s | server CPU s/ckpt | PostgreSQL CPU s/ckpt | moto CPU s/ckpt "
        "| trainer CPU s/ckpt | other CPU s | exactly once |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    missed = []

    def cell(rows, key, digits):
        values = [r[key] for r in rows]
        if min(values) < 0:  # raw numbers of a run that counted live processes only
            missed.append(key)
            return "n/a*"
        return f"{median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"

    for n in args["trainers"]:
        rows = [r for r in raw["trainers"] if r["trainers"] == n]
        if not rows:
            continue
        once = all(r["exactly_once"] for r in rows)
        lines.append(
            f"| {n} | {rows[0]['checkpoints']} | {cell(rows, 'per_second', 2)} "
            f"| {cell(rows, 'server_cpu_per_ckpt', 3)} "
            f"| {cell(rows, 'postgres_cpu_per_ckpt', 3)} | {cell(rows, 'moto_cpu_per_ckpt', 3)} "
            f"| {cell(rows, 'trainer_cpu_per_ckpt', 3)} | {cell(rows, 'other_cpu', 0) if other_ok else 'n/a†'} "
            f"| {'yes' if once else 'NO'} ({len(rows)}/{len(rows) if once else sum(r['exactly_once'] for r in rows)}) |"
        )
    if missed:
        lines += [
            "",
            "\\* This run summed the CPU of live processes only, so PostgreSQL backends that ended during the "
            "window were missed (a negative difference); `trainers.py` now also counts the CPU of reaped "
            "children (cutime/cstime).",
        ]
    if not other_ok:
        lines += [
            "",
            "† This run's *other CPU* also counted the trainers' own CPU (they exit inside the window, and "
            "their time then leaves the live process table); `trainers.py` now counts reaped children too.",
        ]
    if raw.get("multipart"):
        lines += [
            "",
            "### Memory of the training process during a multipart upload",
            "",
            "One-epoch fit in the benchmark process, async upload to the same stack. *multipart*: the client has "
            f"`MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true`, `MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE` = "
            f"`MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE` = {MULTIPART_CHUNK // 2**20} MiB: MLflow asks the server for "
            "presigned part URLs and PUTs each chunk straight to S3. *single PUT*: the default; the file streams "
            "through the MLflow server, which uploads it to S3 itself (boto3 splits it in 8 MiB parts). *S3 parts* is "
            "read back from the object's ETag. The window is the publisher's `_publish` (sha256 + `log_checkpoint`), "
            "RSS sampled every 2 ms. MLflow reads each part in flight into memory, so with multipart the peak is "
            f"about the parts in flight (2 per CPU: {2 * int(raw['machine']['nproc'])} here) times the chunk, "
            "whatever the file size; the single PUT streams from the file.",
            "",
            "| size | upload | file MB | S3 parts | window s | RSS at start MB | RSS peak above start MB "
            "| tracemalloc peak MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in raw["multipart"]:
            lines.append(
                f"| {m['size']} | {'multipart' if m['multipart'] else 'single PUT'} | {m['file_mb']:.1f} "
                f"| {m['s3_parts']} | {m['publish_seconds']:.2f} | {m['rss_baseline_mb']:.0f} "
                f"| {m['rss_peak_above_baseline_mb']:.1f} | {m['tracemalloc_peak_mb']:.1f} |"
            )
    lines += ["", SECTION_END]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trainers", default="1,4,16")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sizes", default="60MB,250MB", help="multipart sizes (benchmarks/common.py SIZES); '' to skip"
    )
    parser.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument(
        "--render-only", metavar="RAW_JSON", help="rewrite the section from an earlier run's out/trainers-*.json"
    )
    args = parser.parse_args(argv)
    if args.render_only:
        with open(args.render_only) as f:
            raw = json.load(f)
        text = render(raw)
        replace_section(args.results, text, SECTION_START, SECTION_END)
        print(text)
        return 0
    trainers = [int(n) for n in args.trainers.split(",")]
    sizes = [s for s in args.sizes.split(",") if s]
    os.makedirs(OUT, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="bench-trainers-", dir=OUT)
    started = time.monotonic()
    stack = ProductionStack(workdir)
    raw = {
        "args": {"trainers": trainers, "epochs": args.epochs, "repeats": args.repeats, "sizes": sizes},
        "trainers": [],
        "multipart": [],
        "workers": stack.workers,
        "other_cpu_counts_reaped": True,
    }
    try:
        stack.start()
        print("stack up:", {k: v and round(v, 1) for k, v in stack.timings.items()}, flush=True)
        for round_ in range(args.repeats):
            order = trainers[round_ % len(trainers) :] + trainers[: round_ % len(trainers)]
            for n in order:
                figures = run_trainers(stack, n, args.epochs, workdir)
                figures["round"] = round_
                raw["trainers"].append(figures)
                print(json.dumps(figures), flush=True)
            _write(raw, args.results, started)  # a round at a time: an interrupted run keeps what it measured
        for size in sizes:
            for multipart in (True, False):
                figures = measure_multipart(stack, size, multipart, workdir)
                figures.pop("run_id", None)
                raw["multipart"].append(figures)
                print(json.dumps(figures), flush=True)
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(_write(raw, args.results, started))
    return 0


def _write(raw: dict, results: str, started: float) -> str:
    raw.update(
        generated=local_now(),
        elapsed_min=(time.monotonic() - started) / 60,
        machine=machine_info(),
        versions=versions(),
        rounds=len({r["round"] for r in raw["trainers"]}),
    )
    with open(
        os.path.join(
            OUT, f"trainers-{raw.setdefault('stamp', datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))}.json"
        ),
        "w",
    ) as f:
        json.dump(raw, f, indent=1)
    text = render(raw)
    replace_section(results, text, SECTION_START, SECTION_END)
    return text


if __name__ == "__main__":
    sys.exit(main())
