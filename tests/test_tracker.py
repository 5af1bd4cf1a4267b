"""The tracker contract: a minimal third-party tracker, registered through the entry point group."""

from __future__ import annotations

import os

import pytest
from support.helpers import make_data, make_model, sha256

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.tracker import Tracker, TrackerError, resolve_tracker, tracker_names


def test_a_minimal_third_party_tracker_logs_every_checkpoint_once(installed_folder_tracker, workdir):
    assert "folder" in tracker_names()
    callback = TrackedModelCheckpoint("ckpt/m-{epoch}.keras", tracker="folder", keep_top_k=1, monitor="loss")
    x, y = make_data()
    make_model().fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[callback])
    assert callback.last_report.ok
    logged = sorted(os.listdir(workdir / "logged"))
    assert [name.rsplit("-", 1)[0] for name in logged] == ["tiny-e0001", "tiny-e0002", "tiny-e0003"]
    for entry, tracker, ref in callback.last_report.logged:
        assert tracker == "folder" and os.path.dirname(ref) == str(workdir / "logged")
        assert sha256(ref) == entry.record.sha256
    # It cannot delete (the default), so keep_top_k keeps everything it logged, there and on disk.
    assert sorted(os.listdir(workdir / "ckpt")) == ["m-1.keras", "m-2.keras", "m-3.keras"]
    # No registry side: one clear error, not an AttributeError.
    with pytest.raises(TrackerError, match="a folder tracker .* cannot list or promote"):
        tracked_ckpt.list_checkpoints(tracker="folder")


def test_the_contract_is_the_base_class():
    class Incomplete(Tracker):
        def start(self, resume=None):
            return {}

    with pytest.raises(TypeError, match="log_checkpoint"):
        Incomplete()

    class DuckTyped:
        display_name = "duck"

        def start(self, resume=None):
            return {}

        def log_checkpoint(self, record, path, destination, first_attempt=False):
            return "x"

    with pytest.raises(TypeError, match="subclass of tracked_ckpt.tracker.Tracker"):
        resolve_tracker(DuckTyped())


def test_a_tracker_without_job_keys_refuses_resume_by_key_in_one_line(installed_folder_tracker, workdir):
    callback = TrackedModelCheckpoint("ckpt/m-{epoch}.keras", tracker="folder", resume="job-7")
    x, y = make_data()
    with pytest.raises(TypeError, match=r"^Tracker a folder cannot find a run by job key: use resume=True "):
        make_model().fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[callback])
    # Local resume state is the way for it: resume=True works.
    again = TrackedModelCheckpoint("ckpt/m-{epoch}.keras", tracker="folder", resume=True)
    make_model().fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[again])
    assert again.last_report.ok and len(os.listdir(workdir / "logged")) == 1
