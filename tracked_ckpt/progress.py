"""Progress bars for waits that take more than a moment, and silence when nobody watches.

Bars appear only when stderr is a terminal (tqdm), after `delay` seconds; in
CI logs, notebooks' captured output and pipes nothing is printed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tqdm import tqdm

from tracked_ckpt import settings

_Item = TypeVar("_Item")


def interactive() -> bool:
    """True when a person is watching stderr."""
    try:
        return sys.stderr.isatty() and settings.show_progress()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A bytes bar with a "checkpoints left" postfix, or nothing when not interactive.

    Args:
        description: what is being waited for.
        total_bytes: bytes to transfer.
        total_items: checkpoints to transfer.
        delay: seconds before the bar shows up (short waits stay quiet).
    """

    def __init__(self, description: str, total_bytes: int, total_items: int, delay: float = 1.0):
        self.items_left = total_items
        self._bar = None
        if interactive():
            self._bar = tqdm(
                total=total_bytes,
                desc=description,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                delay=delay,
                leave=False,
                file=sys.stderr,
            )
            self._bar.set_postfix_str(f"{total_items} checkpoint(s) left")

    def advance(self, nbytes: int, items: int = 0) -> None:
        if self._bar is None:
            return
        self._bar.update(nbytes)
        if items:
            self.items_left -= items
            self._bar.set_postfix_str(f"{self.items_left} checkpoint(s) left")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watch_folder_size(folder: str, progress: Progress, interval: float = 0.2) -> Callable[[], None]:
    """Advance `progress` as files grow in `folder` (for downloads we do not stream ourselves).

    Returns a function that stops watching.
    """
    if progress._bar is None:
        return lambda: None
    stop = threading.Event()
    seen = [0]

    def size() -> int:
        total = 0
        for dirpath, _, files in os.walk(folder):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(dirpath, name))
                except OSError:
                    pass
        return total

    def loop() -> None:
        while not stop.wait(interval):
            now = size()
            if now > seen[0]:
                progress.advance(now - seen[0])
                seen[0] = now

    thread = threading.Thread(target=loop, name="tracked-ckpt-progress", daemon=True)
    thread.start()

    def done() -> None:
        stop.set()
        thread.join()

    return done


def wait_with_progress(
    description: str,
    pending: Callable[[], list[_Item]],
    join: Callable[[float], None],
    alive: Callable[[], bool],
    deadline: float | None,
    size_of: Callable[[_Item], int],
) -> None:
    """Wait (with `join(seconds)`) while `alive()` and before `deadline`, showing what is `pending()`.

    Joining rather than sleeping returns the moment the work is done.
    """
    items = pending()
    total = sum(size_of(e) for e in items)
    with Progress(description, total, len(items)) as bar:
        left_bytes, left_items = total, len(items)
        while alive() and (deadline is None or time.monotonic() < deadline):
            join(0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic())))
            now = pending()
            now_bytes = sum(size_of(e) for e in now)
            bar.advance(max(0, left_bytes - now_bytes), max(0, left_items - len(now)))
            left_bytes, left_items = now_bytes, len(now)
