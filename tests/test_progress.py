"""Progress bars show on a terminal and stay quiet elsewhere."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios

from support.helpers import child

from tracked_ckpt.progress import Progress, interactive


def run_on_terminal(command: list[str]) -> str:
    """Run a command with stdout/stderr on a pseudo-terminal; return everything it printed."""
    leader, follower = pty.openpty()
    # A fresh pty is 0 columns wide, and tqdm draws nothing in no space.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(command, stdout=follower, stderr=follower, close_fds=True)
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
    out = run_on_terminal(child("progress_bar"))
    assert "tracked-ckpt: uploading" in out
    assert "checkpoint(s) left" in out and "MB" in out
    assert "finished" in out


def test_quiet_when_not_on_a_terminal():
    done = subprocess.run(child("progress_bar"), capture_output=True, text=True, check=True)
    assert done.stdout == "finished\n"
    assert done.stderr == ""


def test_no_bar_object_under_pytest_capture(capsys):
    assert not interactive()
    with Progress("x", 10, 1, delay=0) as bar:
        bar.advance(10, 1)
    assert capsys.readouterr().err == ""
