"""This process's fits (`tracked_ckpt.fits`), driven by plain objects that satisfy its `LiveFit` protocol."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tracked_ckpt import fits
from tracked_ckpt.spool import Spool


class Fit:
    """The least a session offers the process registry: an id, a thread, a spool, runs, and an end."""

    def __init__(self, spool: Spool, *, fit: object | None = None, run_id: str = "run-1", owned: bool = True):
        self.id = fits.new_id()
        self.fit = fit
        self.thread = threading.current_thread()
        self.spool = spool
        self.trackers: dict[str, Any] = {}
        self.destinations: dict[str, dict[str, Any]] = {"mlflow": {"run_id": run_id, "owned": owned}}
        self.joined: fits.LiveFit | None = None
        self.open = True
        self.ending = False
        self.ended = threading.Event()
        self.ends: list[tuple[bool, bool]] = []

    def queued(self) -> list[Any]:
        return []

    def end(self, completed: bool, *, cut_off: bool = False) -> None:
        self.ends.append((completed, cut_off))
        fits.unregister(self)
        self.ended.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.ended.wait(timeout)


@pytest.fixture
def spool(tmp_path) -> Iterator[Spool]:
    yield Spool(tmp_path / "spool")
    for left in fits.live_sessions():  # a failed test must not leave its fits to the next one (or to exit)
        if isinstance(left, Fit):
            fits.unregister(left)


def test_a_registered_fit_is_live_until_it_is_unregistered(spool):
    fit = Fit(spool)
    fits.register(fit)
    assert fit in fits.live_sessions()
    assert fits.sessions_of_spool(Spool(spool.directory)) == [fit]
    fits.unregister(fit)
    assert fit not in fits.live_sessions()
    assert fits.sessions_of_spool(spool) == []


def test_ids_are_never_reused():
    assert len({fits.new_id() for _ in range(100)}) == 100


def test_callbacks_of_one_fit_share_the_session_that_began_first(spool):
    shared = object()
    first, second, elsewhere = Fit(spool, fit=shared), Fit(spool, fit=shared), Fit(spool, fit=object())
    assert fits.same_fit(first) is None
    fits.register(first)
    assert fits.same_fit(second) is first
    assert fits.same_fit(elsewhere) is None
    second.joined = first
    fits.register(second)
    assert fits.sessions_joined_to(first) == [second]
    first.open = False  # an ended fit is not joined
    assert fits.same_fit(Fit(spool, fit=shared)) is None
    fits.unregister(second)
    fits.unregister(first)


def test_wait_returns_at_once_while_no_fit_is_ending_and_waits_for_those_that_are(spool):
    training = Fit(spool)
    fits.register(training)
    assert fits.wait(timeout=0) is True  # a fit still training is not waited for
    training.ending = True
    assert fits.wait(timeout=0) is False  # its end has not completed
    finisher = threading.Thread(target=training.end, args=(True,))
    finisher.start()
    assert fits.wait(timeout=60) is True
    finisher.join()
    assert training not in fits.live_sessions()


def test_a_name_taken_in_a_run_by_another_fit_is_renamed_and_freed_when_that_run_ends(spool):
    first, second = Fit(spool), Fit(spool, owned=False)  # two fits logging into the same run
    fits.register(first)
    fits.register(second)
    taken: list[set[str]] = []

    def rename(others: set[str]) -> str:
        taken.append(others)
        return "net-2-e0001"

    assert fits.claim_name(first, "net-e0001", rename) == "net-e0001"
    assert fits.claim_name(first, "net-e0001", rename) == "net-e0001"  # its own name again: no rename
    assert fits.claim_name(second, "net-e0001", rename) == "net-2-e0001"
    assert taken == [{"net"}]
    fits.unregister(second)
    fits.unregister(first)  # it started the run and no live fit logs to it: the run's names are forgotten
    again = Fit(spool)
    assert fits.claim_name(again, "net-e0001", rename) == "net-e0001"
    assert len(taken) == 1


def test_the_last_destination_is_remembered_per_tracker(monkeypatch):
    monkeypatch.setattr(fits, "_LAST_DESTINATIONS", {})
    assert fits.last_destination("mlflow") is None
    fits.remember({"mlflow": {"run_id": "a"}, "wandb": {}})
    assert fits.last_destination("mlflow") == {"run_id": "a"}
    assert fits.last_destination("wandb") is None  # nothing is remembered for a tracker that logged nowhere
    fits.last_destination("mlflow")["run_id"] = "changed"  # a copy
    assert fits.last_destination("mlflow") == {"run_id": "a"}


def test_a_new_fit_on_the_thread_winds_down_the_one_that_never_ended(spool):
    stale, other_fit = Fit(spool), Fit(spool)
    fits.register(stale)
    fits.wind_down_stale(other_fit, resuming=False)
    assert stale.ends == [(False, False)]  # ended as failed: it raised
    assert stale not in fits.live_sessions()


def test_a_fit_ending_in_the_background_is_left_to_end_unless_the_new_fit_resumes(spool):
    ending = Fit(spool)
    ending.ending = True
    fits.register(ending)
    fits.wind_down_stale(Fit(spool), resuming=False)
    assert ending.ends == []
    fits.wind_down_stale(Fit(spool), resuming=True)
    assert ending.ends == [(False, False)]


def test_a_fit_whose_worker_thread_ended_is_ended_as_finished(spool):
    registered = threading.Event()
    fit = Fit(spool)

    def train() -> None:
        fit.thread = threading.current_thread()
        fits.register(fit)
        registered.set()  # and the thread ends without ending the fit, as a trial stopped by its scheduler

    worker = threading.Thread(target=train)
    worker.start()
    assert registered.wait(60)
    assert fit.ended.wait(60), "the thread watcher did not end the fit"
    assert fit.ends == [(True, True)]
