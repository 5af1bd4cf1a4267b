"""`StopSignals`: caught only while a fit runs, passed on as the signal would have acted without us.

End to end (a training process preempted, drained, resumed) is in test_preempted_fit.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from tracked_ckpt.preemption import StopSignals, signals_arg


def test_signals_are_named_as_users_write_them():
    assert signals_arg("SIGTERM") == (signal.SIGTERM,)
    assert signals_arg("usr1") == (signal.SIGUSR1,)
    assert signals_arg([15, "SIGTERM", signal.SIGUSR2]) == (signal.SIGTERM, signal.SIGUSR2)
    assert signals_arg(None) == signals_arg(()) == ()


@pytest.mark.parametrize("bad", ["SIGNOPE", 9999, "KILL", signal.SIGSTOP])
def test_a_signal_that_cannot_be_caught_is_refused_in_one_line(bad):
    with pytest.raises(ValueError) as info:
        signals_arg(bad)
    assert "\n" not in str(info.value) and "SIGTERM" in str(info.value)


def _child(body: str) -> subprocess.CompletedProcess[str]:
    source = "import os, signal, sys\nfrom tracked_ckpt.preemption import StopSignals\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=60)


def test_the_default_action_ends_the_process_killed_by_the_signal():
    done = _child(
        """
        stop = StopSignals((signal.SIGTERM,), active=lambda: True)
        assert stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM  # noted, not acted on: the process lives on
        print("noted", flush=True)
        stop.deliver()
        print("still alive", flush=True)
        """
    )
    assert done.stdout == "noted\n", done.stderr
    assert done.returncode == -signal.SIGTERM  # what a shell and Kubernetes report as 143


def test_the_users_handler_runs_and_then_is_back():
    done = _child(
        """
        calls = []
        signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
        before = signal.getsignal(signal.SIGUSR1)
        stop = StopSignals((signal.SIGUSR1,), active=lambda: True)
        stop.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert calls == [], calls  # the fit saves first
        stop.deliver()
        assert calls == [signal.SIGUSR1], calls
        assert signal.getsignal(signal.SIGUSR1) is before
        print("ok")
        """
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


def test_a_signal_after_the_fit_ended_acts_at_once():
    # A fit that raised never restored its handlers: the next signal must not be swallowed.
    done = _child(
        """
        running = [True]
        stop = StopSignals((signal.SIGTERM,), active=lambda: running[0])
        stop.install()
        running[0] = False
        print("fit over", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        print("still alive", flush=True)
        """
    )
    assert done.stdout == "fit over\n"
    assert done.returncode == -signal.SIGTERM


def test_the_next_fit_takes_over_what_a_raised_fit_left_installed():
    done = _child(
        """
        calls = []
        signal.signal(signal.SIGTERM, lambda signum, frame: calls.append("user"))
        user = signal.getsignal(signal.SIGTERM)
        first = StopSignals((signal.SIGTERM,), active=lambda: False)
        first.install()  # that fit raised: never restored
        second = StopSignals((signal.SIGTERM,), active=lambda: True)
        second.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert second.received == signal.SIGTERM and first.received is None
        second.deliver()
        assert calls == ["user"] and signal.getsignal(signal.SIGTERM) is user
        print("ok")
        """
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


def test_an_ignored_signal_stays_ignored():
    done = _child(
        """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop = StopSignals((signal.SIGTERM,), active=lambda: True)
        assert not stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received is None and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        print("ok")
        """
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


def test_only_the_main_thread_installs_and_it_says_so(caplog):
    results = []
    stop = StopSignals((signal.SIGTERM,), active=lambda: True)
    thread = threading.Thread(target=lambda: results.append(stop.install()), name="trial-3")
    with caplog.at_level("INFO", logger="tracked_ckpt"):
        thread.start()
        thread.join()
    assert results == [False] and not stop.installed
    assert signal.getsignal(signal.SIGTERM) is not stop._note
    assert "'trial-3'" in caplog.text and "SIGTERM" in caplog.text


def test_the_grace_period_counts_from_the_signal():
    stop = StopSignals((signal.SIGUSR2,), active=lambda: True)
    assert stop.remaining(25.0) == 25.0
    stop.install()
    try:
        signal.raise_signal(signal.SIGUSR2)
        assert stop.received == signal.SIGUSR2
        assert 24.0 < stop.remaining(25.0) <= 25.0
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
