"""How many bytes this process has read: what "the file is read once" tests count."""

from __future__ import annotations

from pathlib import Path

import pytest


def bytes_read() -> int:
    """Bytes this process has read through read/pread so far (Linux `/proc/self/io` rchar); skips elsewhere."""
    try:
        counters = Path("/proc/self/io").read_text()
    except OSError:
        pytest.skip("no /proc/self/io here: reads cannot be counted")
    for line in counters.splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    pytest.skip("/proc/self/io has no rchar here")
