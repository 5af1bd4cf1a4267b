"""The `tracked-ckpt` command: list, show, compare, promote, pull, delete and sync checkpoints; collect garbage.

Example:

    tracked-ckpt ls --experiment digits-demo
    tracked-ckpt ls --registered-model digits-classifier
    tracked-ckpt diff digits-e0003 digits-e0007 --experiment digits-demo
    tracked-ckpt promote digits-classifier --experiment digits-demo
    tracked-ckpt ls --tracker wandb --offline          # the newest W&B offline run, from its folder
    tracked-ckpt pull digits-classifier --alias champion -o ./model
    tracked-ckpt pull --run-id 1a2b3c --epoch 3 -o ./model
    tracked-ckpt rm digits-e0002 --run-id 1a2b3c
    tracked-ckpt sync checkpoints/.tracked_ckpt/spool
    tracked-ckpt gc --experiment digits-demo
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

# TensorFlow's C++ start-up chatter would drown a one-line answer.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tracked_ckpt import garbage, registry, verbs
from tracked_ckpt.packgc import DEFAULT_GRACE_SECONDS
from tracked_ckpt.record import SCHEMA_KEYS
from tracked_ckpt.sync import sync_spool

if TYPE_CHECKING:
    from tracked_ckpt.publisher import PublishReport

logger = logging.getLogger("tracked_ckpt")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 on success, 1 on error, 2 on usage errors)."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # e.g. its database set-up notices
    if getattr(args, "tracking_uri", None):
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("tracked-ckpt: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, no traceback: the message says what to do
        if args.verbose:
            logger.exception("failed")
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"tracked-ckpt: error: {in_cli_terms(message)}", file=sys.stderr)
        return 1


# The library's messages name keyword arguments, calls and "this process"; a command line has flags and
# commands (a `--where KEY=VALUE` the message quotes stays as it is).
_KEYWORD = re.compile(
    r"(?<!--where )\b(run_id|experiment|alias|version|monitor|tracker|tracking_uri|name|epoch|step|force)="
    r"(?:'([^']*)'|\"([^\"]*)\"|(\d+\b|True\b))?"
)
_PROMOTE = re.compile(r"\bpromote_best\('([^']*)'((?:, \w+='[^']*')*)\)")
_THIS_PROCESS = re.compile(r"\s*\([^()]*\bthis process\)|,?\s*\b(?:in|from) this process\b")


def in_cli_terms(message: str) -> str:
    """A library error message as the command line says it: flags for keywords, commands for calls, no "this process".

    Example:
        >>> in_cli_terms("pass run_id='proj/1a2b' or experiment= (no fit has logged in this process).")
        'pass --run-id proj/1a2b or --experiment.'
        >>> in_cli_terms("promote a checkpoint first (promote_best('digits', tracker='wandb'))")
        'promote a checkpoint first (tracked-ckpt promote digits --tracker wandb)'
        >>> in_cli_terms("2 checkpoints match epoch=2: pass step= to choose one, or force=True.")
        '2 checkpoints match --epoch 2: pass --step to choose one, or --force.'
        >>> in_cli_terms("--where 'epoch3' is not KEY=VALUE, e.g. --where epoch=3")
        "--where 'epoch3' is not KEY=VALUE, e.g. --where epoch=3"
    """

    def flag(match: re.Match[str]) -> str:
        name = "--" + match.group(1).replace("_", "-")
        value = next((v for v in match.groups()[1:] if v is not None), None)
        return f"{name} {value}" if value and value != "True" else name

    message = _THIS_PROCESS.sub("", message)
    message = _PROMOTE.sub(lambda m: f"tracked-ckpt promote {m.group(1)}{m.group(2).replace(',', '')}", message)
    return _KEYWORD.sub(flag, message)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracked-ckpt",
        description="List, inspect, compare, promote, download, delete and sync checkpoints logged by "
        "TrackedModelCheckpoint.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tracker", default="mlflow", help="tracker name: mlflow (default) or wandb")
        p.add_argument(
            "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
        )

    def scope(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run-id", help="the run to look in")
        p.add_argument("--experiment", help="look in every run of this experiment (W&B: project)")
        p.add_argument(
            "--offline",
            nargs="?",
            const="",
            metavar="DIR",
            help="W&B: read offline runs from disk, no server: the newest under WANDB_DIR (else ./wandb), the one "
            "--run-id names, or those in DIR (an offline-run-* folder, or a folder of them)",
        )

    ls = commands.add_parser(
        "ls", help="list the checkpoints of a run, an experiment or every experiment as a table, grouped by run"
    )
    common(ls)
    scope(ls)
    ls.add_argument("--all-experiments", action="store_true", help="look in every experiment of the store (MLflow)")
    ls.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep checkpoints whose schema field matches (repeatable; git_commit takes a prefix of 7+ "
        f"hex digits, booleans yes/no, true/false or 1/0); keys: {', '.join(SCHEMA_KEYS)}",
    )
    ls.add_argument(
        "--registered-model",
        metavar="NAME",
        help="list the versions of this registered model (W&B: Registry collection), with their aliases",
    )
    ls.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    ls.set_defaults(func=_ls)

    diff = commands.add_parser("diff", help="compare two checkpoints: metrics, epoch, step, commit, size, sha256, run")
    common(diff)
    scope(diff)
    diff.add_argument("a", metavar="A", help="a checkpoint's name (e.g. digits-e0003) or id, as ls prints them")
    diff.add_argument("b", metavar="B", help="the other checkpoint's name or id")
    diff.add_argument("--all", action="store_true", help="also show the fields that are the same")
    diff.add_argument("--json", action="store_true", help="print JSON instead of a table")
    diff.set_defaults(func=_diff)

    show = commands.add_parser("show", help="show everything recorded about one registered checkpoint")
    common(show)
    show.add_argument("registered_name")
    _add_alias_or_version_options(show)
    show.set_defaults(func=_show)

    promote = commands.add_parser("promote", help="register the best checkpoint and move an alias onto it")
    common(promote)
    scope(promote)
    promote.add_argument("registered_name")
    promote.add_argument("--alias", default=registry.DEFAULT_ALIAS, help="alias to move (default: champion)")
    promote.add_argument("--name", help="only checkpoints with this base name")
    promote.add_argument("--monitor", help="metric to rank by (default: the one recorded)")
    promote.add_argument("--mode", choices=["min", "max"], help="direction (default: the one recorded)")
    promote.add_argument(
        "--force",
        action="store_true",
        help="move the alias even if the current holder is better (only_if_better=False)",
    )
    promote.set_defaults(func=_promote)

    pull = commands.add_parser("pull", help="download a registered or logged checkpoint (verified against its sha256)")
    common(pull)
    pull.add_argument(
        "registered_name",
        nargs="?",
        help="the registered model; or leave it out and name a logged checkpoint (--run-id or --experiment "
        "with --epoch, --step or --name)",
    )
    _add_alias_or_version_options(pull)
    scope(pull)
    _add_which_options(pull)
    pull.add_argument("--name", help="a logged checkpoint's name (e.g. digits-e0003), or a base name with --epoch")
    pull.add_argument("-o", "--output", help="copy the file into this folder (default: print the cached path)")
    pull.set_defaults(func=_pull)

    rm = commands.add_parser(
        "rm", help="delete a logged checkpoint (refused if a registered version or alias points at it)"
    )
    common(rm)
    scope(rm)
    rm.add_argument(
        "checkpoint",
        nargs="?",
        help="its name (e.g. digits-e0003) or id, as ls prints them; or a base name with --epoch",
    )
    _add_which_options(rm)
    rm.add_argument(
        "--force",
        action="store_true",
        help="delete it even if registered: the registered versions (and aliases) pointing at it go first",
    )
    rm.set_defaults(func=_rm)

    sync = commands.add_parser("sync", help="log checkpoints left waiting in a spool (after a crash or outage)")
    sync.add_argument(
        "spools",
        nargs="*",
        help="spool folders, or folders above them such as a sweep's checkpoint root "
        "(default: every spool under the current folder)",
    )
    sync.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds (default 300)")
    sync.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI to log to instead of the one each fit recorded in its spool (a server that "
        "moved, with the same store); there is no --tracker: sync logs to the trackers the spool names",
    )
    sync.add_argument(
        "--retry-failed",
        action="store_true",
        help="also retry checkpoints set aside after an error retrying could not fix",
    )
    sync.set_defaults(func=_sync)

    gc = commands.add_parser(
        "gc", help="delete the chunk-store packs no incremental checkpoint references (two runs: condemn, then delete)"
    )
    common(gc)
    gc.add_argument("--experiment", help="the experiment whose chunk store to collect (default: the latest one used)")
    gc.add_argument("--all-experiments", action="store_true", help="collect every experiment's chunk store (MLflow)")
    gc.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_SECONDS,
        metavar="SECONDS",
        help="how long a condemned pack waits before a later run deletes it; longer than any upload "
        f"(default {DEFAULT_GRACE_SECONDS:.0f}, a day; 0 only when nothing logs into the experiment)",
    )
    gc.set_defaults(func=_gc)
    return parser


def _add_alias_or_version_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--alias", help=f"alias (default: {registry.DEFAULT_ALIAS})")
    group.add_argument("--version", help="registered version number")


def _add_which_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epoch", type=int, help="the checkpoint of this epoch (its end-of-epoch save)")
    p.add_argument("--step", type=int, help="the checkpoint of this step")


def _ls(args: argparse.Namespace) -> int:
    if args.registered_model:
        return _ls_registered(args)
    where = {}
    for item in args.where:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--where {item!r} is not KEY=VALUE, e.g. --where epoch=3")
        where[key] = value
    if args.all_experiments and args.experiment:
        raise ValueError("Pass --experiment NAME or --all-experiments, not both.")
    run_id, experiment = _offline_scope(args)
    found = registry.list_checkpoints(
        run_id=run_id,
        experiment=registry.ALL_EXPERIMENTS if args.all_experiments else experiment,
        tracker=args.tracker,
        where=where or None,
    )
    found = _grouped_by_run(found)
    if args.json:
        for c in found:
            print(
                json.dumps(
                    {
                        "id": c.id,
                        "run_id": c.run_id,
                        "run_name": c.extra.get("run_name") or "",
                        "location": c.location,
                        "name": c.record.name,
                        **c.record.metadata(),
                    }
                )
            )
        return 0
    # An offline run's checkpoint is nowhere but in its folder: its file says more than its id.
    last = "file" if args.offline is not None else "id"
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
                _size(r.size_bytes),
                c.location if args.offline is not None else c.id,
            )
        )
    _table(rows)
    if not found:
        hint = f" match --where {' '.join(args.where)}: drop it to see them all" if args.where else ""
        print(f"(no checkpoints{hint})", file=sys.stderr)
    return 0


def _offline_scope(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The run id and experiment to read; with `--offline`, W&B in offline mode and DIR as the experiment."""
    if args.offline is None:
        return args.run_id, args.experiment
    if args.tracker.strip().lower() != "wandb":
        raise ValueError("--offline reads W&B offline runs from disk: pass --tracker wandb.")
    if args.offline and args.experiment:
        raise ValueError("Pass --offline DIR or --experiment PROJECT, not both.")
    if args.offline and not os.path.isdir(args.offline):
        raise FileNotFoundError(f"{args.offline} is not a folder: pass an offline run's folder or a folder of them.")
    os.environ["WANDB_MODE"] = "offline"  # this process only: reads come from disk
    return args.run_id, args.offline or args.experiment


def _ls_registered(args: argparse.Namespace) -> int:
    if args.run_id or args.experiment or args.all_experiments or args.where:
        raise ValueError("--registered-model lists a registered model's versions: drop the other filters.")
    found = verbs.registered_versions(args.registered_model, tracker=args.tracker)
    if args.json:
        for c in found:
            entry = {"version": c.extra.get("version"), "aliases": list(c.aliases), "id": c.id, "run_id": c.run_id}
            print(
                json.dumps(
                    {**entry, "run_name": c.extra.get("run_name") or "", "name": c.record.name, **c.record.metadata()}
                )
            )
        return 0
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
                _size(r.size_bytes),
                c.id,
            )
        )
    _table(rows)
    if not found:
        print(f"({args.registered_model} has no versions registered by tracked-ckpt)", file=sys.stderr)
    return 0


def _diff(args: argparse.Namespace) -> int:
    comparison = verbs.compare_checkpoints(
        args.a, args.b, run_id=args.run_id, experiment=args.experiment, tracker=args.tracker
    )
    if args.json:
        print(json.dumps(comparison.as_dict(), default=str))
        return 0
    differing = {field for field, _, _ in comparison.differences}
    rows = [("field", "A", "B", "")]
    for field, a, b in comparison.rows:
        if args.all or field in differing or field in ("name", "run_id"):
            rows.append((field, _cell(field, a), _cell(field, b), "*" if field in differing else ""))
    _table(rows)
    if not differing:
        print("(no differences: the same checkpoint)")
    return 0


def _cell(field: str, value: object) -> str:
    if value is None:
        return "-"
    if field in ("sha256", "git_commit") and isinstance(value, str):
        return value[:12]  # as ls shortens a commit; --json has them whole
    if field == "size_bytes" and isinstance(value, int):
        return f"{_size(value)} ({value})"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _rm(args: argparse.Namespace) -> int:
    if args.checkpoint is None and args.epoch is None and args.step is None:
        raise ValueError("Say which checkpoint: its name or id (as ls prints them), or --epoch / --step.")
    deletion = verbs.delete_checkpoint(
        args.checkpoint,
        run_id=args.run_id,
        experiment=args.experiment,
        epoch=args.epoch,
        step=args.step,
        tracker=args.tracker,
        force=args.force,
    )
    print(deletion.reason)
    return 0


def _grouped_by_run(found: Sequence[registry.LoggedCheckpoint]) -> list[registry.LoggedCheckpoint]:
    """The checkpoints with each run's together, runs in the order their first checkpoint comes."""
    runs: dict[str, list[registry.LoggedCheckpoint]] = {}
    for c in found:
        runs.setdefault(c.run_id, []).append(c)
    return [c for group in runs.values() for c in group]


def _show(args: argparse.Namespace) -> int:
    c = registry.registered_checkpoint(
        args.registered_name, alias=args.alias, version=args.version, tracker=args.tracker
    )
    print(f"{c.record.name}  ({c.id})")
    print(
        f"  registered: {args.registered_name} version {c.extra.get('version', '?')}"
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
    return 0


def _promote(args: argparse.Namespace) -> int:
    run_id, experiment = _offline_scope(args)
    result = registry.promote_best(
        args.registered_name,
        tracker=args.tracker,
        run_id=run_id,
        experiment=experiment,
        name=args.name,
        monitor=args.monitor,
        mode=args.mode,
        alias=args.alias,
        only_if_better=not args.force,
    )
    print(result.reason)
    if result.version:
        print(f"{result.registered_name}@{result.alias} -> version {result.version}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    path = registry.download_checkpoint(
        args.registered_name,
        alias=args.alias,
        version=args.version,
        run_id=args.run_id,
        experiment=args.experiment,
        name=args.name,
        epoch=args.epoch,
        step=args.step,
        tracker=args.tracker,
    )
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        target = os.path.join(args.output, os.path.basename(path))
        shutil.copyfile(path, target)
        path = target
    print(path)
    return 0


def _sync(args: argparse.Namespace) -> int:
    for folder in args.spools:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder} is not a folder: pass a spool folder or a folder above spools.")
    folders = args.spools or ["."]
    found = 0

    def show(spool: str, report: PublishReport) -> None:
        nonlocal found
        found += 1
        logged = len({entry.id for entry, _, _ in report.logged})
        print(
            f"{spool}: logged {logged} checkpoint(s), {len(report.pending)} still pending"
            + (f", {len(report.failed)} failed" if report.failed else "")
            + (f", in use by live process {', '.join(report.held)}" if report.held else "")
        )
        for _, reason in report.failed:
            print(f"  failed: {reason}")

    report = sync_spool(
        folders, timeout=args.timeout, retry_failed=args.retry_failed, on_spool=show, tracking_uri=args.tracking_uri
    )
    if not found:
        print(
            f"Nothing to sync: no checkpoints wait in a spool under {', '.join(args.spools) or 'the current folder'}."
        )
        return 0
    if report.held:
        raise RuntimeError(
            f"A live fit still uses the spool (process {', '.join(report.held)}): it may add or be logging "
            "checkpoints. Let it finish (or stop it), then run sync again."
        )
    pending = len(report.pending) + len(report.failed)
    if report.unreachable:
        raise RuntimeError(
            f"{' and '.join(report.unreachable)} does not answer, so {pending} checkpoint(s) still wait: start "
            "the server (or pass --tracking-uri where it answers now), then run sync again."
        )
    if pending:
        raise RuntimeError(f"{pending} checkpoint(s) could not be logged: is the tracker reachable? Run sync again.")
    return 0


def _gc(args: argparse.Namespace) -> int:
    if args.all_experiments and args.experiment:
        raise ValueError("Pass --experiment NAME or --all-experiments, not both.")
    reports = garbage.collect_garbage(
        experiment=registry.ALL_EXPERIMENTS if args.all_experiments else args.experiment,
        tracker=args.tracker,
        grace_seconds=args.grace,
    )
    for report in reports:
        c = report.collected
        print(
            f"{report.store}: {report.checkpoints} live checkpoint(s) keep {c.live} pack(s); "
            f"condemned {len(c.condemned)}, rescued {len(c.rescued)}, deleted {len(c.deleted)} "
            f"({_size(report.bytes_freed)} freed), {len(c.waiting)} waiting for the grace period"
        )
        if c.missing:
            print(f"  {len(c.missing)} pack(s) that live checkpoints need are missing from the store")
    return 1 if any(report.collected.missing for report in reports) else 0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
