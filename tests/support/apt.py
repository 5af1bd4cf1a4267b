"""Installing a Debian package from the test set-up (CI machines start without chromium or postgresql)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time


def apt_install(package: str, *, error: type[Exception], timeout: float, extra: tuple[str, ...] = ()) -> float:
    """`apt-get update` then install `package`; return the seconds it took.

    Raises:
        error: not root, no apt-get, a step failed or ran past `timeout`.
    """
    if os.geteuid() != 0:
        raise error(f"{package} is not installed and we are not root: run `sudo apt-get install -y {package}`")
    if shutil.which("apt-get") is None:
        raise error(f"{package} is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    started = time.monotonic()
    for command in (
        ["apt-get", "update"],
        # Wait for another apt (e.g. a parallel test session) instead of failing on its lock.
        ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", *extra, package],
    ):
        try:
            done = subprocess.run(
                command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise error(f"`{' '.join(command)}` took longer than {timeout:.0f}s") from None
        if done.returncode != 0:
            raise error(f"`{' '.join(command)}` failed ({done.returncode}): {(done.stdout + done.stderr)[-1500:]}")
    return time.monotonic() - started
