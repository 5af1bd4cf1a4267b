"""What the `tracked-ckpt` commands print: tables, JSON lines, sizes, and the reports of show, diff, sync and gc.

The `print_*` functions and `table` print to standard output (the command line's answer, not a
log); the commands in `cli_commands` decide what to read and hand it here. Nothing here reads a
tracker, so it imports the package only for type checkers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracked_ckpt.packgc import StoreCollected
    from tracked_ckpt.publisher import PublishReport
    from tracked_ckpt.tracker import LoggedCheckpoint
    from tracked_ckpt.verbs import Comparison


def print_checkpoints(found: Sequence[LoggedCheckpoint], *, as_json: bool, show_file: bool) -> None:
    """`ls`: the checkpoints grouped by run, as a table (its last column each one's id, or file) or JSON lines."""
    found = grouped_by_run(found)
    if as_json:
        for c in found:
            print_json_line(
                {
                    "id": c.id,
                    "run_id": c.run_id,
                    "run_name": c.extra.get("run_name") or "",
                    "location": c.location,
                    "name": c.record.name,
                    **c.record.metadata(),
                }
            )
        return
    last = "file" if show_file else "id"
    rows = [("name", "run", "run_id", "epoch", "step", "monitor", "value", "best", "commit", "dirty", "size", last)]
    for c in found:
        r = c.record
        rows.append(
            (
                r.name or "-",
                str(c.extra.get("run_name") or "-"),
                c.run_id or "-",
                str(r.epoch),
                str(r.step),
                r.monitor,
                "-" if r.value is None else f"{r.value:.6g}",
                "*" if r.is_best else "",
                (r.git_commit or "-")[:8],
                "-" if r.git_dirty is None else ("yes" if r.git_dirty else "no"),
                size(r.size_bytes),
                c.location if show_file else c.id,
            )
        )
    table(rows)


def print_versions(found: Sequence[LoggedCheckpoint], *, as_json: bool) -> None:
    """`ls --registered-model`: a registered model's versions with their aliases, as a table or JSON lines."""
    if as_json:
        for c in found:
            entry = {"version": c.extra.get("version"), "aliases": list(c.aliases), "id": c.id, "run_id": c.run_id}
            print_json_line(
                {**entry, "run_name": c.extra.get("run_name") or "", "name": c.record.name, **c.record.metadata()}
            )
        return
    rows = [
        ("version", "aliases", "name", "run", "run_id", "epoch", "step", "monitor", "value", "commit", "size", "id")
    ]
    for c in found:
        r = c.record
        rows.append(
            (
                str(c.extra.get("version", "?")),
                ",".join(c.aliases) or "-",
                r.name or "-",
                str(c.extra.get("run_name") or "-"),
                c.run_id or "-",
                str(r.epoch),
                str(r.step),
                r.monitor,
                "-" if r.value is None else f"{r.value:.6g}",
                (r.git_commit or "-")[:8],
                size(r.size_bytes),
                c.id,
            )
        )
    table(rows)


def print_comparison(comparison: Comparison, *, as_json: bool, every_field: bool) -> None:
    """`diff`: the fields that differ (with `every_field`, all of them) side by side, or the comparison as JSON."""
    if as_json:
        print(json.dumps(comparison.as_dict(), default=str))
        return
    differing = {field for field, _, _ in comparison.differences}
    rows = [("field", "A", "B", "")]
    for field, a, b in comparison.rows:
        if every_field or field in differing or field in ("name", "run_id"):
            rows.append((field, cell(field, a), cell(field, b), "*" if field in differing else ""))
    table(rows)
    if not differing:
        print("(no differences: the same checkpoint)")


def print_registered(c: LoggedCheckpoint, registered_name: str) -> None:
    """`show`: everything recorded about one registered checkpoint, a line a field."""
    print(f"{c.record.name}  ({c.id})")
    print(
        f"  registered: {registered_name} version {c.extra.get('version', '?')}"
        f"{'  aliases: ' + ', '.join(c.aliases) if c.aliases else ''}"
    )
    run_name = c.extra.get("run_name")
    print(f"  run: {f'{run_name} ({c.run_id})' if run_name else c.run_id}")
    if c.extra.get("url") or c.extra.get("run_url"):  # W&B: the version's page; MLflow: the run's
        print(f"  ui: {c.extra.get('url') or c.extra['run_url']}")
    print(f"  location: {c.location}")
    for key, value in c.record.metadata().items():
        print(f"  {key}: {value}")
    for key, value in sorted(c.record.metrics.items()):
        print(f"  metric {key}: {value:.6g}")


def print_spool_report(spool: str, report: PublishReport) -> None:
    """`sync`: what one spool's sync logged, left pending or failed, and which live process holds it."""
    logged = len({entry.id for entry, _, _ in report.logged})
    print(
        f"{spool}: logged {logged} checkpoint(s), {len(report.pending)} still pending"
        + (f", {len(report.failed)} failed" if report.failed else "")
        + (f", in use by live process {', '.join(report.held)}" if report.held else "")
    )
    for _, reason in report.failed:
        print(f"  failed: {reason}")


def print_gc_report(report: StoreCollected) -> None:
    """`gc`: what one collection did to a chunk store, and the packs live checkpoints miss."""
    c = report.collected
    print(
        f"{report.store}: {report.checkpoints} live checkpoint(s) keep {c.live} pack(s); "
        f"condemned {len(c.condemned)}, rescued {len(c.rescued)}, deleted {len(c.deleted)} "
        f"({size(report.bytes_freed)} freed), {len(c.waiting)} waiting for the grace period"
    )
    if c.missing:
        print(f"  {len(c.missing)} pack(s) that live checkpoints need are missing from the store")


def grouped_by_run(found: Sequence[LoggedCheckpoint]) -> list[LoggedCheckpoint]:
    """The checkpoints with each run's together, runs in the order their first checkpoint comes."""
    runs: dict[str, list[LoggedCheckpoint]] = {}
    for c in found:
        runs.setdefault(c.run_id, []).append(c)
    return [c for group in runs.values() for c in group]


def cell(field: str, value: object) -> str:
    """One value of `diff`'s table: shortened digests, sizes in units and bytes, `-` for nothing.

    Example:
        >>> cell("git_commit", "0123456789abcdef")
        '0123456789ab'
        >>> cell("size_bytes", 2048)
        '2.0 KB (2048)'
        >>> cell("metric.loss", None)
        '-'
    """
    if value is None:
        return "-"
    if field in ("sha256", "git_commit") and isinstance(value, str):
        return value[:12]  # as ls shortens a commit; --json has them whole
    if field == "size_bytes" and isinstance(value, int):
        return f"{size(value)} ({value})"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def size(n: float) -> str:
    """A number of bytes for people, in B, KB, MB or GB (of 1024).

    Example:
        >>> size(512), size(1536), size(3 * 1024**3)
        ('512 B', '1.5 KB', '3.0 GB')
    """
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def table(rows: Sequence[tuple[str, ...]]) -> None:
    """Print `rows` (the first the header) as left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(text.ljust(width) for text, width in zip(row, widths, strict=False)).rstrip())


def print_json_line(entry: dict[str, Any]) -> None:
    """Print one entry as a line of JSON."""
    print(json.dumps(entry))
