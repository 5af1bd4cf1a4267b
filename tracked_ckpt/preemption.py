"""Preemption: a stop signal during `fit` becomes a saved, logged checkpoint and a resumable job.

Spot and preemptible VMs, a drained Kubernetes node, a Cloud TPU maintenance event and a SLURM
job at its time limit all warn the process with a signal and a grace period before they kill it
(Kubernetes: SIGTERM, then SIGKILL 30 s later; SLURM: `--signal=USR1@90`). While a fit runs,
`StopSignals` catches those signals. Its handler only notes the signal, because a Python signal
handler runs between two bytecodes of the main thread, in the middle of anything (a save, an
upload's bookkeeping); the callback acts on it at the next batch boundary: it saves a checkpoint
tagged as preempted, its session drains the uploads within the grace period and ends the runs
as preempted, and `StopSignals.deliver` then ends the process the way the signal would have
without tracked-ckpt: the handler the user had installed runs, or the signal's default action
ends the process (for SIGTERM: killed by the signal, exit status 143 in a shell and in
Kubernetes).

Only the main thread may install signal handlers (CPython's rule): a fit on another thread (a
Ray Tune trial, a W&B sweep agent's trial) catches nothing and says so once at its start; the
spool and resume still cover the kill that follows. Outside `fit` nothing is installed; the
previous handlers are back when the fit ends, or, for a fit that raised (Keras calls no hook
then), the first time one of the signals arrives after it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

logger = logging.getLogger("tracked_ckpt")

#: What a preemption signal is caught as by default: Kubernetes, Docker, systemd, spot VMs' shutdown.
DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM,)

_Handler: TypeAlias = Callable[[int, types.FrameType | None], Any] | int | signal.Handlers | None
_SignalArg: TypeAlias = int | str | signal.Signals


def signals_arg(value: _SignalArg | Sequence[_SignalArg] | None) -> tuple[signal.Signals, ...]:
    """Check a `preempt_on` value: a signal, its name (`"SIGUSR1"` or `"USR1"`) or number, or several.

    An empty sequence (or None) catches nothing.

    Example:
        >>> signals_arg("USR1"), signals_arg([signal.SIGTERM, "SIGUSR2"]), signals_arg(())
        ((<Signals.SIGUSR1: 10>,), (<Signals.SIGTERM: 15>, <Signals.SIGUSR2: 12>), ())

    Raises:
        ValueError: not a signal this platform has, or one that cannot be caught (SIGKILL, SIGSTOP).
    """
    if value is None:
        return ()
    items = [value] if isinstance(value, (int, str)) else list(value)
    out: list[signal.Signals] = []
    for item in items:
        out.append(_one_signal(item))
    return tuple(dict.fromkeys(out))


def _one_signal(item: _SignalArg) -> signal.Signals:
    try:
        if isinstance(item, str):
            name = item.strip().upper()
            found = signal.Signals[name if name.startswith("SIG") else "SIG" + name]
        else:
            found = signal.Signals(item)
    except (KeyError, ValueError):
        raise ValueError(
            f"preempt_on={item!r} is not a signal: pass a name such as 'SIGTERM' or 'SIGUSR1' "
            "(SLURM's --signal=USR1@90), a number, or () to catch none."
        ) from None
    if found in (signal.SIGKILL, signal.SIGSTOP):
        raise ValueError(
            f"preempt_on={found.name} cannot be caught by any process: preemption warns with another signal "
            "(SIGTERM on Kubernetes and spot VMs, the one SLURM's --signal names)."
        )
    return found


class StopSignals:
    """Catches preemption signals for the length of one fit and notes the first one.

    Args:
        signals: the signals to catch.
        active: whether the fit that installed the handlers is still running; a signal
            that arrives after it ended (a fit that raised) is passed on at once.

    Example:
        >>> stop = StopSignals((signal.SIGUSR1,), active=lambda: True)
        >>> stop.install()
        True
        >>> os.kill(os.getpid(), signal.SIGUSR1)
        >>> stop.received
        <Signals.SIGUSR1: 10>
        >>> stop.restore()
        >>> signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
        True
    """

    def __init__(self, signals: Sequence[signal.Signals], active: Callable[[], bool], fit: object | None = None):
        self.signals = tuple(signals)
        self.active = active
        self.fit = fit  # what identifies the fit (Keras's `params` dict), for `for_fit`
        self._delivered = False
        self.received: signal.Signals | None = None
        self.received_at: float | None = None  # time.monotonic() when it arrived
        self._previous: dict[signal.Signals, _Handler] = {}  # what each signal did before; kept for `deliver`
        self._installed = False
        self._frame: types.FrameType | None = None

    @classmethod
    def for_fit(
        cls, signals: Sequence[signal.Signals], active: Callable[[], bool], fit: object | None = None
    ) -> StopSignals:
        """The catcher of a fit's signals: installed now, or the one another callback of the same fit installed.

        Two `TrackedModelCheckpoint`s in one `fit` (the same `fit` object: Keras's `params`)
        share one catcher, so both see the signal and their runs end together.
        """
        for sig in signals:
            owner = getattr(signal.getsignal(sig), "__self__", None)
            if (
                isinstance(owner, StopSignals)
                and fit is not None
                and owner.fit is fit
                and owner.active()
                and owner.signals == tuple(signals)
            ):
                return owner
        stop = cls(signals, active, fit=fit)
        stop.install()
        return stop

    @property
    def installed(self) -> bool:
        """Whether this fit's handlers are in place."""
        return self._installed

    def install(self) -> bool:
        """Catch the signals (main thread only); False when nothing was installed, and why is logged."""
        if not self.signals:
            return False
        if threading.current_thread() is not threading.main_thread():
            logger.info(
                "This fit runs on thread %r, and Python lets only the main thread catch signals: %s will not "
                "save a checkpoint first (the spool and resume still cover the kill that follows).",
                threading.current_thread().name,
                "/".join(s.name for s in self.signals),
            )
            return False
        for sig in self.signals:
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue  # the job ignores this signal on purpose: so do we
            stale = getattr(previous, "__self__", None)
            if isinstance(stale, StopSignals):
                # A fit that raised left its handler in place: take over what it replaced.
                previous = stale._previous.pop(sig, signal.SIG_DFL)
            self._previous[sig] = previous
            signal.signal(sig, self._note)
            self._installed = True
        return self._installed

    def _note(self, signum: int, frame: types.FrameType | None) -> None:
        if self.received is not None:
            return  # a second signal changes nothing: the first one's grace period is the one that runs
        if not self.active():
            # The fit that installed this is over (it raised): behave as if we were never here.
            self._pass_on(signal.Signals(signum), frame)
            return
        self.received = signal.Signals(signum)
        self.received_at = time.monotonic()
        self._frame = frame

    def remaining(self, grace: float) -> float:
        """Seconds left of `grace`, counted from the signal's arrival."""
        if self.received_at is None:
            return grace
        return max(0.0, grace - (time.monotonic() - self.received_at))

    def restore(self) -> None:
        """Put the previous handlers back (main thread only; a no-op elsewhere or when not installed)."""
        if not self._installed or threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._note:  # a later fit may have taken over: leave its handler
                signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._installed = False

    def deliver(self) -> None:
        """End as the noted signal would have ended the process without tracked-ckpt.

        Runs the handler installed before the fit (which may raise, e.g. `SystemExit`), or
        applies the default action (for SIGTERM and SIGUSR1: the process ends, killed by the
        signal). Returns only when that handler returned or the signal was ignored.
        """
        if self.received is None or self._delivered:
            return
        self._delivered = True
        self._pass_on(self.received, self._frame)

    def _pass_on(self, sig: signal.Signals, frame: types.FrameType | None) -> None:
        previous = self._previous.get(sig, signal.SIG_DFL)
        self.restore()
        if callable(previous):
            previous(int(sig), frame)
            return
        if previous == signal.SIG_IGN:
            return
        # The default action (or a handler installed outside Python, which we cannot call).
        for stream in [*logging.getLogger().handlers, *logger.handlers, sys.stdout, sys.stderr]:
            try:
                stream.flush()
            except Exception:  # e.g. the signal interrupted a write to it: end anyway
                pass
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
