"""Headless Chromium for the UI test: Debian's package, installed on demand, driven by Playwright.

Browsers are never downloaded (`playwright install` cannot reach its CDN here):
Playwright's Python package drives Debian's `/usr/bin/chromium`, which this
module installs with apt when it is missing and we are root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

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
    if os.geteuid() != 0:
        raise ChromiumUnavailable(
            f"{CHROMIUM} is missing and we are not root: run `sudo apt-get install -y chromium`"
        )
    if shutil.which("apt-get") is None:
        raise ChromiumUnavailable(f"{CHROMIUM} is missing and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    started = time.monotonic()
    for command in (
        ["apt-get", "update"],
        ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends", "chromium"],
    ):
        try:
            done = subprocess.run(
                command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise ChromiumUnavailable(f"`{' '.join(command)}` took longer than {timeout:.0f}s") from None
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-1500:]
            raise ChromiumUnavailable(f"`{' '.join(command)}` failed ({done.returncode}): {tail}")
    elapsed = time.monotonic() - started
    if not os.access(CHROMIUM, os.X_OK):
        raise ChromiumUnavailable(f"apt-get installed chromium but {CHROMIUM} is not there")
    return CHROMIUM, elapsed


if __name__ == "__main__":
    path, seconds = ensure_chromium()
    print(path, "already installed" if seconds is None else f"installed in {seconds:.1f}s")
