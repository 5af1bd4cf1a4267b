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

This module is the entry point: `main`, the argparse parser, the checks of flags the parser cannot
refuse alone, and `in_cli_terms`, which puts the library's messages in the command line's words.
What each command does is `cli_commands`; what it prints, `cli_output`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence

# TensorFlow's C++ start-up chatter would drown a one-line answer.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tracked_ckpt import cli_commands, registry
from tracked_ckpt.packgc import DEFAULT_GRACE_SECONDS
from tracked_ckpt.record import SCHEMA_KEYS

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
        _check_flags(args)
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
    r"(?<!--where )\b(run_id|experiment|alias|version|monitor|tracker|tracking_uri|name|epoch|step|force"
    r"|grace_seconds)="
    r"(?:'([^']*)'|\"([^\"]*)\"|(\d+\b|True\b))?"
)
_FLAG_OF = {"grace_seconds": "grace"}  # keyword arguments whose flag has another name
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
        name = "--" + _FLAG_OF.get(match.group(1), match.group(1)).replace("_", "-")
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
    ls.set_defaults(func=cli_commands.ls)

    diff = commands.add_parser("diff", help="compare two checkpoints: metrics, epoch, step, commit, size, sha256, run")
    common(diff)
    scope(diff)
    diff.add_argument("a", metavar="A", help="a checkpoint's name (e.g. digits-e0003) or id, as ls prints them")
    diff.add_argument("b", metavar="B", help="the other checkpoint's name or id")
    diff.add_argument("--all", action="store_true", help="also show the fields that are the same")
    diff.add_argument("--json", action="store_true", help="print JSON instead of a table")
    diff.set_defaults(func=cli_commands.diff)

    show = commands.add_parser("show", help="show everything recorded about one registered checkpoint")
    common(show)
    show.add_argument("registered_name")
    _add_alias_or_version_options(show)
    show.set_defaults(func=cli_commands.show)

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
    promote.set_defaults(func=cli_commands.promote)

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
    pull.set_defaults(func=cli_commands.pull)

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
    rm.set_defaults(func=cli_commands.rm)

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
    sync.set_defaults(func=cli_commands.sync)

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
    gc.set_defaults(func=cli_commands.gc)
    return parser


def _add_alias_or_version_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--alias", help=f"alias (default: {registry.DEFAULT_ALIAS})")
    group.add_argument("--version", help="registered version number")


def _add_which_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epoch", type=int, help="the checkpoint of this epoch (its end-of-epoch save)")
    p.add_argument("--step", type=int, help="the checkpoint of this step")


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse what the parser cannot: malformed `--where`s, flags that contradict, no checkpoint named.

    These checks live here, before any command runs, because their errors name flags: the errors
    raised below `main` name keywords, as the library's do, and `main` says them as flags.
    `--offline` is read here too: it turns W&B offline and makes its folder the experiment to read.
    """
    if args.command == "ls" and args.registered_model:
        if args.run_id or args.experiment or args.all_experiments or args.where:
            raise ValueError("--registered-model lists a registered model's versions: drop the other filters.")
        return
    if args.command == "ls":
        for item in args.where:
            if "=" not in item:
                raise ValueError(f"--where {item!r} is not KEY=VALUE, e.g. --where epoch=3")
    if args.command in ("ls", "gc") and args.all_experiments and args.experiment:
        raise ValueError("Pass --experiment NAME or --all-experiments, not both.")
    if args.command in ("ls", "promote"):
        _read_offline(args)
    if args.command == "rm" and args.checkpoint is None and args.epoch is None and args.step is None:
        raise ValueError("Say which checkpoint: its name or id (as ls prints them), or --epoch / --step.")


def _read_offline(args: argparse.Namespace) -> None:
    """With `--offline`: W&B in offline mode, and DIR (if given) as the experiment to read."""
    if args.offline is None:
        return
    if args.tracker.strip().lower() != "wandb":
        raise ValueError("--offline reads W&B offline runs from disk: pass --tracker wandb.")
    if args.offline and args.experiment:
        raise ValueError("Pass --offline DIR or --experiment PROJECT, not both.")
    if args.offline and not os.path.isdir(args.offline):
        raise FileNotFoundError(f"{args.offline} is not a folder: pass an offline run's folder or a folder of them.")
    os.environ["WANDB_MODE"] = "offline"  # this process only: reads come from disk
    args.experiment = args.offline or args.experiment


if __name__ == "__main__":
    sys.exit(main())
