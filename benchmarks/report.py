"""RESULTS.md: the Markdown of `run.py`'s part (the header, the fit-time tables, the realistic rows, the
scaling figures, the targets table, NOTES.md at the end) and its stdout summary; and the marked sections
the other scripts own in the same file (`cost.py`, `trainers.py`, `short_fits.py`): their markers,
reading one back, replacing one. Rendering only: the numbers come from `summary.py` and `scaling.py`, the
verdicts from `targets.py`."""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from typing import Any

from common import HERE, SIZES, machine_info, versions
from targets import evaluate_targets, target_table
from variants import BASELINE, BATCH, N_TRAIN, N_VAL, VARIANTS

#: The sections of RESULTS.md that `cost.py` and `trainers.py` write and `write_results` keeps.
COST_SECTION = ("<!-- cost:start -->", "<!-- cost:end -->")
TRAINERS_SECTION = ("<!-- trainers:start -->", "<!-- trainers:end -->")


def render_realistic(realistic: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The realistic rows: a table per variant and row, then the per-pair ratios."""
    if not realistic:
        return []
    lines = [
        "## Realistic rows: a checkpoint every several seconds of training",
        "",
        f"Each run: `fit` with enough steps per epoch for about {args.epoch_seconds:.0f} s of training on this "
        f"machine (calibrated at the start of the row), {args.realistic_epochs} epochs, a checkpoint at every epoch "
        "end; plain `ModelCheckpoint` and `TrackedModelCheckpoint` (async, local MLflow server) in alternating "
        "pairs (A B, B A, …). *ratio* = fit of the tracked run / fit of the plain run of the same pair.",
        "",
        "| row | steps/epoch | variant | fit s, median (min–max) | to end of last epoch s | on_train_end s | "
        "process CPU s | server CPU s | other CPU s (max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, data in realistic.items():
        for variant, row in data["rows"].items():
            lines.append(
                f"| {label} | {row['steps_per_epoch']} | {variant} | {fmt_s(row, 'fit_s')} | "
                f"{fmt_s(row, 'to_last_epoch_s')} | {row['end_s']:.2f} | {row['cpu_s']:.1f} | "
                f"{row['server_cpu_s']:.1f} | {row['other_cpu_s']:.1f} ({row['other_cpu_s_max']:.1f}) |"
            )
    lines.append("")
    for label, data in realistic.items():
        if data["ratios"]:
            lines.append(
                f"* {label}: per-pair ratios {', '.join(f'{r:.3f}' for r in data['ratios'])}; "
                f"median **{data['median_ratio']:.3f}**"
            )
        if data.get("no_wait_ratios"):
            lines.append(
                f"* {label}, blocking=False: per-pair ratios "
                f"{', '.join(f'{r:.3f}' for r in data['no_wait_ratios'])}; "
                f"median **{data['no_wait_median_ratio']:.3f}**"
            )
    lines.append("")
    return lines


def fmt_s(row: dict[str, Any], key: str, digits: int = 2) -> str:
    """`median (min–max)` of `key` in a summary row."""
    return f"{row[key]:.{digits}f} ({row[key + '_min']:.{digits}f}–{row[key + '_max']:.{digits}f})"


def render_tables(
    table: dict[str, Any], file_mb: dict[str, float], skipped: dict[str, str], args: argparse.Namespace
) -> list[str]:
    """One fit-time table per size, then its per-round ratios to plain `ModelCheckpoint`."""
    lines = []
    for size, rows in table.items():
        actual = f"{file_mb[size]:.1f} MB" if size in file_mb else "?"
        width, layers = SIZES[size]
        lines.append(f"### {size} (actual `.keras` file {actual}; Dense {layers}x{width}, Adam)")
        lines.append("")
        lines.append(
            "| variant | fit s, median (min–max) | × plain | to end of last epoch s | × plain | "
            "callback on training thread s | Keras save s | extra / ckpt ms (% of save) | "
            "on_train_end s | bg upload / ckpt s | process CPU s | server CPU s | other CPU s |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for variant, _ in VARIANTS:
            if variant not in rows:
                if variant in skipped and variant in args.variants:
                    lines.append(f"| {variant} | skipped: {skipped[variant]} ||||||||||||")
                continue
            row = rows[variant]
            ratio = f"{row['fit_ratio']:.2f}" if "fit_ratio" in row else "–"
            ratio2 = f"{row['to_last_epoch_ratio']:.2f}" if "to_last_epoch_ratio" in row else "–"
            if variant == "none":
                cb = save = extra = end = "–"
            else:
                cb = fmt_s(row, "callback_s")
                save = f"{row['save_s']:.2f}"
                if row["save_per_ckpt_s"] > 0:
                    extra = (
                        f"{1000 * row['extra_per_ckpt_s']:.0f} "
                        f"({100 * row['extra_per_ckpt_s'] / row['save_per_ckpt_s']:.0f}%)"
                    )
                else:
                    extra = f"{1000 * row['extra_per_ckpt_s']:.0f} (no Keras save)"
                end = f"{row['end_s']:.2f}"
            upload = "–" if row.get("upload_per_ckpt_s") is None else f"{row['upload_per_ckpt_s']:.2f}"
            lines.append(
                f"| {variant} | {fmt_s(row, 'fit_s')} | {ratio} | {fmt_s(row, 'to_last_epoch_s')} | {ratio2} | "
                f"{cb} | {save} | {extra} | {end} | {upload} | {row['cpu_s']:.1f} | {row['server_cpu_s']:.1f} | "
                f"{row['other_cpu_s']:.1f} ({row['other_cpu_s_max']:.1f}) |"
            )
        lines.append("")
        ratios = [(v, rows[v]) for v, _ in VARIANTS if v in rows and v != BASELINE and rows[v].get("fit_ratios")]
        if ratios:
            lines.append("Per-round fit ratios to plain `ModelCheckpoint` (round 1, 2, …; median):")
            lines.append("")
            for variant, row in ratios:
                lines.append(
                    f"* `{variant}`: {', '.join(f'{r:.2f}' for r in row['fit_ratios'])}; "
                    f"median **{row['fit_ratio_median']:.2f}**"
                )
            lines.append("")
    return lines


def render_scaling(scaling: dict[str, Any]) -> list[str]:
    """The scaling figures of `scaling.run_scaling`: promote_best, warm load_model, upload memory."""
    lines = ["## Scaling (local MLflow server)", ""]
    ns, nb = scaling["n_small"], scaling["n_big"]
    lines.append(f"### promote_best over one run of {ns} vs {nb} checkpoints")
    lines.append("")
    stubbed = not scaling[f"log_{nb}"].get("artifacts", True)
    lines.append(
        "Checkpoints are real LoggedModels logged by `MlflowTracker.log_checkpoint` (idempotency search, "
        "schema tags, metrics linked to the model, run output, READY), distinct epoch/step/value; 4 logging "
        "threads. "
        + (
            "To fit the time budget the artifact upload inside it was stubbed out "
            "(`scaling.py --artifacts` uploads them; promote_best never reads artifacts), so "
            "*logging them* is not the full per-checkpoint cost."
            if stubbed
            else ""
        )
    )
    lines.append("")
    lines.append(
        "| checkpoints in the run | logging them: s total, ms/checkpoint (first 10% / last 10%) | "
        "promote_best 1st call: s, MlflowClient calls, HTTP requests | repeat call: s (median of 3), calls, HTTP | "
        "chosen = best? |"
    )
    lines.append("|---|---|---|---|---|")
    for n in (ns, nb):
        lg, pr = scaling[f"log_{n}"], scaling[f"promote_{n}"]
        lines.append(
            f"| {n} | {lg['elapsed_s']:.1f} s, {lg['per_checkpoint_median_ms']:.0f} ms "
            f"({lg['first_tenth_median_ms']:.0f} / {lg['last_tenth_median_ms']:.0f}) | "
            f"{pr['first']['seconds']:.3f} s, {pr['first']['client_calls']}, {pr['first']['http_requests']} | "
            f"{pr['repeat_median_s']:.3f} s, {pr['repeat_client_calls']}, {pr['repeat_http_requests']} | "
            f"{'yes' if pr['first']['checkpoint'] == pr['expected_best'] else 'NO'} ({pr['first']['checkpoint']}) |"
        )
    lines.append("")
    lines.append(
        f"MlflowClient calls of the first promote_best ({nb} checkpoints): "
        + ", ".join(f"`{k}` {v}" for k, v in scaling[f"promote_{nb}"]["first"]["by_method"].items())
    )
    lines.append("")
    lines.append(
        '### Warm `tracked_ckpt.load_model(name, alias="champion")` vs `keras.saving.load_model` on the cached file'
    )
    lines.append("")
    lines.append(
        "Paired rounds (both loads per round, alternating which goes first; models released and "
        "`gc.collect()` outside the timings). *resolve* = `MlflowTracker.resolve` alone (the HTTP part "
        "of a warm load)."
    )
    lines.append("")
    lines.append(
        "| size | file MB | rounds | cold load_model s | warm load_model ms, median (min–max) | "
        "keras.saving.load_model ms | ratio of medians | paired overhead ms (median) | resolve ms | "
        "warm HTTP requests |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for size, ld in scaling["load"].items():
        lines.append(
            f"| {size} | {ld['file_mb']:.1f} | {ld['repeats']} | {ld['cold_s']:.2f} | {ld['warm_median_s'] * 1000:.0f} "
            f"({ld['warm_min_s'] * 1000:.0f}–{ld['warm_max_s'] * 1000:.0f}) | {ld['keras_median_s'] * 1000:.0f} "
            f"({ld['keras_min_s'] * 1000:.0f}–{ld['keras_max_s'] * 1000:.0f}) | {ld['ratio']:.2f} | "
            f"{ld['paired_overhead_median_s'] * 1000:+.0f} | {ld['resolve_median_s'] * 1000:.0f} | "
            f"{ld['warm_http_requests']} |"
        )
    lines.append("")
    lines.append("### Memory of the training process while the publisher hashes and uploads one checkpoint")
    lines.append("")
    lines.append(
        "One-epoch fit, async upload; the window is the tracker's `log_checkpoint` on the upload "
        "thread, while the training thread waits in `on_train_end`. RSS sampled every 2 ms."
    )
    lines.append("")
    lines.append("| size | file MB | window s | RSS at start MB | RSS peak above start MB | tracemalloc peak MB |")
    lines.append("|---|---|---|---|---|---|")
    for size, m in scaling["memory"].items():
        lines.append(
            f"| {size} | {m['file_mb']:.1f} | {m['publish_seconds']:.2f} | {m['rss_baseline_mb']:.0f} | "
            f"{m['rss_peak_above_baseline_mb']:.1f} | {m['tracemalloc_peak_mb']:.1f} |"
        )
    lines.append("")
    return lines


def write_results(
    path: str,
    args: argparse.Namespace,
    table: dict[str, Any],
    scaling: dict[str, Any] | None,
    skipped: dict[str, str],
    errors: list[str],
    file_mb: dict[str, float],
    elapsed: float,
    server_startup: float,
    quiet_waited: float,
    cut: dict[str, tuple[int, int]],
    generated: str | None = None,
    via_make: bool | None = None,
    machine: dict[str, str] | None = None,
    vers: dict[str, str] | None = None,
    realistic: dict[str, Any] | None = None,
) -> None:
    """Write `run.py`'s RESULTS.md to `path`, keeping the sections `cost.py` and `trainers.py` wrote there.

    The command line quoted in it is this process's `sys.argv`; `generated`, `via_make`, `machine` and
    `vers` default to now, `$MAKELEVEL`, this machine and the installed versions (`--render-only` passes
    an earlier run's)."""
    machine = machine or machine_info()
    vers = vers or versions()
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/run.py", *sys.argv[1:]])
    if via_make if via_make is not None else os.environ.get("MAKELEVEL"):
        command = f"make bench  (= {command})"
    lines = [
        "# tracked-ckpt benchmark results",
        "",
        f"Generated by `benchmarks/run.py` on {generated or local_now()}.",
        "",
        f"* Command: `{command}`; total wall time {elapsed / 60:.1f} min (MLflow server start {server_startup:.1f} s; "
        f"{quiet_waited:.0f} s spent waiting for other processes to go quiet before runs, capped at "
        f"{args.quiet_budget:.0f} s).",
        f"* Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} RAM, {machine['os']}.",
        "* Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + ".",
        f"* Each run: `fit` on {N_TRAIN} samples (batch {BATCH}, so 2 steps/epoch) + {N_VAL} validation samples, "
        f'{args.epochs} epochs, one checkpoint per epoch (`monitor="val_loss"`, every epoch saved); '
        f"{args.repeats} repeats per variant, round-robin over variants (order rotated each round), "
        "after one untimed warm-up run of every variant. The model object is reused across runs of a size "
        "(traced once); every run writes into a fresh directory, and its files (local, server, W&B) are "
        "deleted and `sync`ed after the run, outside the timings.",
        '* Tracker runs (MLflow `start_run`, `wandb.init(mode="offline")`) are opened before and closed after '
        "the timed `fit` for every variant that needs one, so `fit` times compare the callbacks only. "
        "TrackedModelCheckpoint attaches to the active run.",
        "* MLflow server: `mlflow server --backend-store-uri sqlite:///… --artifacts-destination … --host 127.0.0.1 "
        "--port <free> --workers 1` with `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`, on the same 2-core machine "
        "(its CPU time competes with training; see the server CPU column).",
        "* OPENBLAS/OMP thread env vars are irrelevant here: TensorFlow uses its own (Eigen/oneDNN) thread pools, "
        "and no run is compute-bound.",
        "",
        "## Fit time and time on the training thread",
        "",
        "Columns: *fit* = the `model.fit` call, including `on_train_end`, where TrackedModelCheckpoint waits for "
        "the queued uploads (the last checkpoint's upload, at least) — this is what a user waits for. "
        "*to end of last epoch* = up to the end of the last epoch's callbacks (training progress; "
        "for async, uploads of earlier checkpoints overlap it). *callback on training thread* = time inside the "
        "checkpoint callback's hooks (all of them, including on_train_begin/on_train_end). *Keras save* = "
        "`Model.save` inside those hooks (all checkpoints). *extra / ckpt* = (per-epoch hook time − Keras save) "
        "/ checkpoints: what the callback adds on the training thread per checkpoint, beyond Keras's own save. "
        "*bg upload / ckpt* = the publisher thread's time per checkpoint (sha256 + tracker call). "
        "*× plain* = median ratio to `keras.callbacks.ModelCheckpoint`. *process CPU* = this process "
        "(all threads) during the fit; *server CPU* = the MLflow server's processes; *other CPU* = everything "
        "else on the machine (median, and max in brackets): other sessions' test suites ran on this shared "
        "2-core machine, and runs with a few seconds of other CPU are disturbed.",
        "",
    ]
    lines += render_tables(table, file_mb, skipped, args)
    if cut:
        lines.append(
            "Time budget: "
            + "; ".join(f"{size} ran {done} of {wanted} repeats" for size, (done, wanted) in cut.items())
            + "."
        )
        lines.append("")
    if skipped:
        lines.append("Skipped variants: " + "; ".join(f"`{k}`: {v}" for k, v in skipped.items()))
        lines.append("")
    if errors:
        lines.append("Errors (runs excluded): " + "; ".join(errors))
        lines.append("")
    lines += render_realistic(realistic or {}, args)
    if scaling:
        lines += render_scaling(scaling)
    lines += ["## Targets", "", *target_table(evaluate_targets(table, scaling, realistic)), ""]
    for kept in (kept_section(path, *COST_SECTION), kept_section(path, *TRAINERS_SECTION)):
        if kept:  # written by benchmarks/cost.py and benchmarks/trainers.py: keep them
            lines += [kept, ""]
    notes = os.path.join(HERE, "NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += [f.read().rstrip(), ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def kept_section(path: str, start: str, end: str) -> str | None:
    """The section of the markdown file `path` marked by `start` and `end`, markers included; None if absent."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    if start not in text or end not in text:
        return None
    return start + text.split(start, 1)[1].split(end, 1)[0] + end


def replace_section(path: str, text: str, start: str, end: str) -> None:
    """Put `text` (a section marked by `start` and `end`) into the markdown file `path`, replacing the
    previous one, else before its "## Targets" heading, else at the end."""
    try:
        with open(path) as f:
            current = f.read()
    except FileNotFoundError:
        current = ""
    if start in current and end in current:
        head, rest = current.split(start, 1)
        current = head + text + rest.split(end, 1)[1]
    elif "\n## Targets" in current:
        head, rest = current.split("\n## Targets", 1)
        current = head.rstrip("\n") + "\n\n" + text + "\n\n## Targets" + rest
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    with open(path, "w") as f:
        f.write(current)


def local_now() -> str:
    """Now, to the minute, in the local time zone: the "generated on" of every RESULTS.md section."""
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def print_summary(table: dict[str, Any], skipped: dict[str, str]) -> None:
    """The summary table on stdout, one line per variant and size."""
    for size, rows in table.items():
        print(
            f"\n{size}: {'variant':24s} {'fit s (median, min-max)':>26s} {'x plain':>8s} {'to-last-epoch':>14s} "
            f"{'x plain':>8s} {'callback s':>10s} {'extra/ckpt ms':>14s}"
        )
        for variant, _ in VARIANTS:
            if variant not in rows:
                continue
            row = rows[variant]
            print(
                f"{'':7s}{variant:24s} {row['fit_s']:8.2f} ({row['fit_s_min']:.2f}-{row['fit_s_max']:.2f})"
                f"{'':5s} {row.get('fit_ratio', float('nan')):8.2f} {row['to_last_epoch_s']:14.2f} "
                f"{row.get('to_last_epoch_ratio', float('nan')):8.2f} {row['callback_s']:10.2f} "
                f"{1000 * row['extra_per_ckpt_s']:14.1f}"
            )
    for variant, reason in skipped.items():
        print(f"skipped {variant}: {reason}")
