"""The `tracked-ckpt` command: list, show, compare, promote, pull, delete and sync checkpoints.

Example:

    tracked-ckpt ls --experiment digits-demo
    tracked-ckpt ls --registered-model digits-classifier
    tracked-ckpt diff digits-e0003 digits-e0007 --experiment digits-demo
    tracked-ckpt promote digits-classifier --experiment digits-demo
    tracked-ckpt pull digits-classifier --alias champion -o ./model
    tracked-ckpt pull --run-id 1a2b3c --epoch 3 -o ./model
    tracked-ckpt rm digits-e0002 --run-id 1a2b3c
    tracked-ckpt sync checkpoints/.tracked_ckpt/spool
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

from tracked_ckpt import registry, verbs
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


# The library's messages name keyword arguments and "this process"; a command line has flags
# (a `--where KEY=VALUE` the message quotes stays as it is).
_KEYWORD = re.compile(
    r"(?<!--where )\b(run_id|experiment|alias|version|name|epoch|step|force)=(?:'([^']*)'|\"([^\"]*)\"|(\d+\b|True\b))?"
)
_THIS_PROCESS = re.compile(r"\s*\([^()]*\bthis process\)|,?\s*\b(?:in|from) this process\b")


def in_cli_terms(message: str) -> str:
    """A library error message as the command line says it: flags for keywords, no "this process".

    Example:
        >>> in_cli_terms("pass run_id='proj/1a2b' or experiment= (no fit has logged in this process).")
        'pass --run-id proj/1a2b or --experiment.'
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
        "--retry-failed",
        action="store_true",
        help="also retry checkpoints set aside after an error retrying could not fix",
    )
    sync.set_defaults(func=_sync)
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
    found = registry.list_checkpoints(
        run_id=args.run_id,
        experiment=registry.ALL_EXPERIMENTS if args.all_experiments else args.experiment,
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
                        "name": c.record.name,
                        **c.record.metadata(),
                    }
                )
            )
        return 0
    rows = [("name", "run", "run_id", "epoch", "step", "monitor", "value", "best", "commit", "dirty", "size", "id")]
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
                c.id,
            )
        )
    _table(rows)
    if not found:
        hint = f" match --where {' '.join(args.where)}: drop it to see them all" if args.where else ""
        print(f"(no checkpoints{hint})", file=sys.stderr)
    return 0


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
    if c.extra.get("run_url"):
        print(f"  ui: {c.extra['run_url']}")
    print(f"  location: {c.location}")
    for key, value in c.record.metadata().items():
        print(f"  {key}: {value}")
    for key, value in sorted(c.record.metrics.items()):
        print(f"  metric {key}: {value:.6g}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    result = registry.promote_best(
        args.registered_name,
        tracker=args.tracker,
        run_id=args.run_id,
        experiment=args.experiment,
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

    report = sync_spool(folders, timeout=args.timeout, retry_failed=args.retry_failed, on_spool=show)
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
            "the server (or fix the URI the fit logged to), then run sync again."
        )
    if pending:
        raise RuntimeError(f"{pending} checkpoint(s) could not be logged: is the tracker reachable? Run sync again.")
    return 0


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
