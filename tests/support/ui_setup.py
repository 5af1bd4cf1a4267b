"""Headless Chromium for the UI test: Debian's package, installed on demand, driven by Playwright.

Browsers are never downloaded (`playwright install` cannot reach its CDN here):
Playwright's Python package drives Debian's `/usr/bin/chromium`, which this
module installs with apt when it is missing and we are root.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: `support` as a script too

from support.apt import apt_install

CHROMIUM = os.environ.get("TRACKED_CKPT_CHROMIUM", "/usr/bin/chromium")

# Headless, and quiet on a machine whose only network is loopback and package registries.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


class ChromiumUnavailable(Exception):
    """Chromium is missing and cannot be installed here (the test skips with this reason)."""


def ensure_chromium(timeout: float = 1200.0) -> tuple[str, float | None]:
    """Return (path to chromium, seconds spent installing it, or None if it was already there)."""
    if os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM, None
    elapsed = apt_install("chromium", error=ChromiumUnavailable, timeout=timeout, extra=("--no-install-recommends",))
    if not os.access(CHROMIUM, os.X_OK):
        raise ChromiumUnavailable(f"apt-get installed chromium but {CHROMIUM} is not there")
    return CHROMIUM, elapsed


if __name__ == "__main__":
    path, seconds = ensure_chromium()
    print(path, "already installed" if seconds is None else f"installed in {seconds:.1f}s")
