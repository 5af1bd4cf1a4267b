"""One error family: everything tracked-ckpt raises on purpose is a `TrackedCkptError`."""

from __future__ import annotations

import importlib
import os
import pickle
import pkgutil

import pytest
from support.helpers import make_data, make_model
from support.mlflow_runs import train_run
from support.mlflow_server import free_port

import tracked_ckpt
from tracked_ckpt import TrackedCkptError, TrackedModelCheckpoint
from tracked_ckpt.integrations.mlflow import MlflowTracker

# The errors and the built-in base each had before the family existed (`except RuntimeError` keeps working).
BUILT_IN_BASES = {
    "AmbiguousCheckpointError": LookupError,
    "BlobNotFoundError": FileNotFoundError,
    "CheckpointNotFoundError": LookupError,
    "ChecksumError": RuntimeError,
    "ChunkStoreError": RuntimeError,
    "JobLockedError": RuntimeError,
    "MissingCodeError": TypeError,
    "MissingRequirementError": ImportError,
    "ProtectedCheckpointError": RuntimeError,
    "TrackerError": RuntimeError,
    "UnknownKeyError": ValueError,
    "UnsupportedVersionError": RuntimeError,
}


def library_errors() -> dict[str, type[BaseException]]:
    """Every exception class defined in tracked_ckpt (integrations included), by name."""
    found = {}
    for module_info in pkgutil.walk_packages(tracked_ckpt.__path__, prefix="tracked_ckpt."):
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.startswith("tracked_ckpt")
            ):
                found[value.__name__] = value
    return found


def test_every_library_error_is_a_tracked_ckpt_error_and_exported():
    errors = library_errors()
    assert set(errors) == {"TrackedCkptError", *BUILT_IN_BASES}  # a new error joins the family, and this list
    for name, error in errors.items():
        assert issubclass(error, TrackedCkptError), name
        assert name in tracked_ckpt.__all__ and getattr(tracked_ckpt, name) is error, name
    assert tracked_ckpt.__all__ == sorted(tracked_ckpt.__all__)


@pytest.mark.parametrize("name, built_in", sorted(BUILT_IN_BASES.items()))
def test_each_error_keeps_its_built_in_base_its_import_path_and_its_name_in_tracebacks(name, built_in):
    error = getattr(tracked_ckpt, name)
    assert issubclass(error, built_in)
    home = importlib.import_module(error.__module__)  # what tracebacks print, and where pickle looks
    assert error.__module__ != "tracked_ckpt.errors" and getattr(home, name) is error
    copy = pickle.loads(pickle.dumps(error("one line")))
    assert type(copy) is error and str(copy) == "one line"


def test_a_tampered_download_is_caught_as_a_tracked_ckpt_error(embedded_store, workdir):
    run_id = train_run([0.2])
    result = tracked_ckpt.promote_best("errors-tamper", run_id=run_id)
    stored = os.path.join(result.checkpoint.location, "data", "model.keras")
    with open(stored, "r+b") as f:  # the tracker's copy is damaged
        f.seek(50)
        f.write(b"tampered")
    with pytest.raises(TrackedCkptError) as caught:
        tracked_ckpt.load_model("errors-tamper", alias="champion")
    assert type(caught.value) is tracked_ckpt.ChecksumError and "Checksum mismatch" in str(caught.value)


def test_an_unreachable_tracker_at_a_keyed_start_is_caught_as_a_tracked_ckpt_error(workdir):
    tracker = MlflowTracker(tracking_uri=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    callback = TrackedModelCheckpoint("ckpt/k-{epoch}.keras", tracker=tracker, resume="needs-the-tracker")
    x, y = make_data()
    try:
        make_model().fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    except TrackedCkptError as exc:
        caught: TrackedCkptError | None = exc
    else:
        caught = None
    assert type(caught) is tracked_ckpt.TrackerError and "Cannot look up job 'needs-the-tracker'" in str(caught)
    assert not os.path.exists(workdir / "ckpt" / "k-1.keras")
