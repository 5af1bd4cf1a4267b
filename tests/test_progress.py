"""Progress bars show on a terminal and stay quiet elsewhere."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap

from tracked_ckpt.progress import Progress, interactive

SCRIPT = textwrap.dedent(
    """
    import time
    from tracked_ckpt.progress import Progress
    with Progress("tracked-ckpt: uploading", 3 * 1024 * 1024, 3, delay=0) as bar:
        for _ in range(3):
            time.sleep(0.2)
            bar.advance(1024 * 1024, 1)
    print("finished")
    """
)


def run_on_terminal(code: str) -> str:
    """Run python code with stdout/stderr on a pseudo-terminal; return everything it printed."""
    leader, follower = pty.openpty()
    # A fresh pty is 0 columns wide, and tqdm draws nothing in no space.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(30)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_bar_with_bytes_and_checkpoints_left_on_a_terminal():
    out = run_on_terminal(SCRIPT)
    assert "tracked-ckpt: uploading" in out
    assert "checkpoint(s) left" in out and "MB" in out
    assert "finished" in out


def test_quiet_when_not_on_a_terminal():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert done.stdout == "finished\n"
    assert done.stderr == ""


def test_no_bar_object_under_pytest_capture(capsys):
    assert not interactive()
    with Progress("x", 10, 1, delay=0) as bar:
        bar.advance(10, 1)
    assert capsys.readouterr().err == ""
