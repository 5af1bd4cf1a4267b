"""From `run.py`'s raw runs to its summary table: per size and variant the medians, min and max of every
timing, the per-checkpoint figures, and the ratios to the baseline (of the medians, and round by round);
per realistic row the same medians and the per-pair ratios."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from common import median
from variants import BASELINE, REALISTIC_VARIANTS


def summarize(runs: list[dict[str, Any]], sizes: Iterable[str], variants: Iterable[str]) -> dict[str, Any]:
    """Per size and variant: medians, min-max, ratios to the baseline."""
    table: dict[str, Any] = {}
    for size in sizes:
        table[size] = {}
        for variant in variants:
            rs = [r for r in runs if r["size"] == size and r["variant"] == variant]
            if not rs:
                continue
            row: dict[str, Any] = {"n": len(rs)}
            for key in (
                "fit_s",
                "to_last_epoch_s",
                "callback_s",
                "per_epoch_hooks_s",
                "save_s",
                "begin_s",
                "end_s",
                "cpu_s",
                "server_cpu_s",
                "other_cpu_s",
                "quiet_wait_s",
                "setup_s",
                "teardown_s",
                "hash_s",
                "upload_s",
            ):
                values = [r[key] for r in rs]
                row[key] = median(values)
                row[key + "_min"] = min(values)
                row[key + "_max"] = max(values)
            n_saves = median([r["n_saves"] for r in rs])
            row["n_saves"] = n_saves
            n_ckpt = rs[0]["epochs"]
            row["checkpoints"] = n_ckpt
            extra = [(r["per_epoch_hooks_s"] - r["save_s"]) / r["epochs"] for r in rs]
            row["extra_per_ckpt_s"] = median(extra)
            row["save_per_ckpt_s"] = median([r["save_s"] / r["epochs"] for r in rs])
            row["upload_per_ckpt_s"] = (
                median([r["upload_s"] / max(1, r["n_uploads"]) for r in rs])
                if any(r["n_uploads"] for r in rs)
                else None
            )
            row["hash_per_ckpt_s"] = (
                median([r["hash_s"] / max(1, r["n_uploads"]) for r in rs]) if any(r["n_uploads"] for r in rs) else None
            )
            table[size][variant] = row
        base = table[size].get(BASELINE)
        for variant, row in table[size].items():
            if base:
                row["fit_ratio"] = row["fit_s"] / base["fit_s"]
                row["to_last_epoch_ratio"] = row["to_last_epoch_s"] / base["to_last_epoch_s"]
                # Per round (the variants of one repeat ran back to back): the noise shows run by run.
                row["fit_ratios"] = per_round_ratios(runs, size, variant, BASELINE)
                if row["fit_ratios"]:
                    row["fit_ratio_median"] = median(row["fit_ratios"])
    return table


def summarize_realistic(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per realistic row: medians per variant, and the per-pair ratios of the async upload to plain."""
    out: dict[str, Any] = {}
    for label in dict.fromkeys(r["size"] for r in runs):
        rows: dict[str, dict[str, Any]] = {}
        for variant in REALISTIC_VARIANTS:
            rs = [r for r in runs if r["size"] == label and r["variant"] == variant]
            if not rs:
                continue
            row: dict[str, Any] = {
                "n": len(rs),
                "steps_per_epoch": rs[0].get("steps_per_epoch"),
                "epochs": rs[0]["epochs"],
            }
            for key in ("fit_s", "to_last_epoch_s", "end_s", "save_s", "cpu_s", "server_cpu_s", "other_cpu_s"):
                values = [r[key] for r in rs]
                row[key], row[key + "_min"], row[key + "_max"] = median(values), min(values), max(values)
            rows[variant] = row
        ratios = per_round_ratios(runs, label, "tracked_async_server", BASELINE)
        no_wait = per_round_ratios(runs, label, "tracked_nowait_server", BASELINE)
        out[label] = {
            "rows": rows,
            "ratios": ratios,
            "median_ratio": median(ratios) if ratios else None,
            "no_wait_ratios": no_wait,
            "no_wait_median_ratio": median(no_wait) if no_wait else None,
        }
    return out


def per_round_ratios(runs: list[dict[str, Any]], size: str, variant: str, baseline: str) -> list[float]:
    """fit_s of `variant` / fit_s of `baseline` in each repeat where both ran."""
    by = {(r["variant"], r.get("repeat")): r["fit_s"] for r in runs if r["size"] == size}
    repeats = sorted({rep for (v, rep) in by if v == variant and rep is not None})
    return [by[(variant, rep)] / by[(baseline, rep)] for rep in repeats if (baseline, rep) in by]
