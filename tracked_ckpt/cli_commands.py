"""What each `tracked-ckpt` command does: one function a command, from its parsed arguments to the library's call.

Each takes the `argparse.Namespace` of `cli`'s parser with its flags already checked there (in
errors that name flags), calls the library (`registry`, `verbs`, `sync`, `garbage`), hands what it
finds to `cli_output` and returns the exit code. An error is raised, for `cli.main` to print in one
line with the keywords it names said as flags.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import TYPE_CHECKING

from tracked_ckpt import cli_output, garbage, registry, verbs
from tracked_ckpt.sync import sync_spool

if TYPE_CHECKING:
    from tracked_ckpt.publisher import PublishReport


def ls(args: argparse.Namespace) -> int:
    """`tracked-ckpt ls`: the checkpoints of a run, an experiment or every experiment (or a registered model's)."""
    if args.registered_model:
        return _ls_registered(args)
    where = {key: value for key, _, value in (item.partition("=") for item in args.where)}
    found = registry.list_checkpoints(
        run_id=args.run_id,
        experiment=registry.ALL_EXPERIMENTS if args.all_experiments else args.experiment,
        tracker=args.tracker,
        where=where or None,
    )
    # An offline run's checkpoint is nowhere but in its folder: its file says more than its id.
    cli_output.print_checkpoints(found, as_json=args.json, show_file=args.offline is not None)
    if not found and not args.json:
        hint = f" match --where {' '.join(args.where)}: drop it to see them all" if args.where else ""
        print(f"(no checkpoints{hint})", file=sys.stderr)
    return 0


def _ls_registered(args: argparse.Namespace) -> int:
    found = verbs.registered_versions(args.registered_model, tracker=args.tracker)
    cli_output.print_versions(found, as_json=args.json)
    if not found and not args.json:
        print(f"({args.registered_model} has no versions registered by tracked-ckpt)", file=sys.stderr)
    return 0


def diff(args: argparse.Namespace) -> int:
    """`tracked-ckpt diff`: two checkpoints side by side."""
    comparison = verbs.compare_checkpoints(
        args.a, args.b, run_id=args.run_id, experiment=args.experiment, tracker=args.tracker
    )
    cli_output.print_comparison(comparison, as_json=args.json, every_field=args.all)
    return 0


def show(args: argparse.Namespace) -> int:
    """`tracked-ckpt show`: everything recorded about one registered checkpoint."""
    c = registry.registered_checkpoint(
        args.registered_name, alias=args.alias, version=args.version, tracker=args.tracker
    )
    cli_output.print_registered(c, args.registered_name)
    return 0


def promote(args: argparse.Namespace) -> int:
    """`tracked-ckpt promote`: register the best checkpoint and move an alias onto it."""
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


def pull(args: argparse.Namespace) -> int:
    """`tracked-ckpt pull`: download a registered or logged checkpoint; print its path (or copy it to `-o`)."""
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


def rm(args: argparse.Namespace) -> int:
    """`tracked-ckpt rm`: delete a logged checkpoint."""
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


def sync(args: argparse.Namespace) -> int:
    """`tracked-ckpt sync`: log the checkpoints waiting in spools; fails while any still wait."""
    for folder in args.spools:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder} is not a folder: pass a spool folder or a folder above spools.")
    folders = args.spools or ["."]
    found = 0

    def on_spool(spool: str, report: PublishReport) -> None:
        nonlocal found
        found += 1
        cli_output.print_spool_report(spool, report)

    report = sync_spool(
        folders, timeout=args.timeout, retry_failed=args.retry_failed, on_spool=on_spool, tracking_uri=args.tracking_uri
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
        # `tracking_uri=`, as the library names it: `main` prints it as the flag (`in_cli_terms`).
        raise RuntimeError(
            f"{' and '.join(report.unreachable)} does not answer, so {pending} checkpoint(s) still wait: start "
            "the server (or pass tracking_uri= where it answers now), then run sync again."
        )
    if pending:
        raise RuntimeError(f"{pending} checkpoint(s) could not be logged: is the tracker reachable? Run sync again.")
    return 0


def gc(args: argparse.Namespace) -> int:
    """`tracked-ckpt gc`: collect the chunk-store packs no checkpoint references; 1 if live packs are missing."""
    reports = garbage.collect_garbage(
        experiment=registry.ALL_EXPERIMENTS if args.all_experiments else args.experiment,
        tracker=args.tracker,
        grace_seconds=args.grace,
    )
    for report in reports:
        cli_output.print_gc_report(report)
    return 1 if any(report.collected.missing for report in reports) else 0
