"""The write side of the `Tracker` contract, checked the same way on every tracker.

One suite, parametrized over the trackers (as Lightning's `tests_pytorch/loggers/test_all.py`
does over its loggers): MLflow on a real `mlflow server`, W&B offline (its server side, where a
check needs one, is the contract-checked fake of `wandb.Api` after a `wandb sync`), and the
minimal third-party folder tracker of tests/plugins. Each check is the contract's sentence in
`tracked_ckpt/tracker.py`; where a tracker lacks an optional part, the check is skipped with the
contract's own words (`registry_of`, `job_keys_of`, the defaults of `is_permanent`).
The read side is tests/integrations/test_registry_parity.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import threading

import keras
import pytest

from tracked_ckpt.record import CheckpointRecord
from tracked_ckpt.tracker import Tracker, TrackerError, job_keys_of, registry_of, resolve_tracker

TRANSIENT = [ConnectionError("connection reset"), TimeoutError("read timed out"), OSError("network is unreachable")]


def make_record(directory, epoch: int) -> tuple[CheckpointRecord, str]:
    """A record for a small file of its own in `directory`, as the callback would describe it."""
    data = f"checkpoint {epoch}".encode()
    path = os.path.join(str(directory), f"m-{epoch:02d}.keras")
    with open(path, "wb") as f:
        f.write(data)
    record = CheckpointRecord(
        name=f"tiny-e{epoch:04d}",
        epoch=epoch,
        step=10 * epoch,
        monitor="val_loss",
        mode="min",
        is_best=True,
        value=1.0 / epoch,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        format="keras",
        filepath=path,
        keras_version=keras.__version__,
        backend="tensorflow",
        metrics={"val_loss": 1.0 / epoch},
    )
    return record, path


class Case:
    """How the suite drives one tracker and reads back what it holds (after `finish`)."""

    def tracker(self) -> Tracker:
        raise NotImplementedError

    def run_of(self, destination) -> str:
        """What names the run a destination logs into."""
        return destination["run_id"]

    def held(self, destination) -> list[tuple[int, str]]:
        """(epoch, sha256) of every checkpoint the run holds, oldest first."""
        raise NotImplementedError

    def deleting(self, records):
        """(tracker, destination, refs) of `records` logged where `delete_checkpoint` acts, and a `held` for it."""
        tracker = self.tracker()
        destination = tracker.start()
        refs = [tracker.log_checkpoint(record, path, destination) for record, path in records]
        return tracker, destination, refs, lambda: self.held(destination)

    def permanent_error(self, tracker, destination, record, path) -> Exception:
        """A real error of this tracker that no retry can fix."""
        raise NotImplementedError

    def registry_scope(self, tracker, destination):
        """(registry, scope) to read the run's checkpoints back through `TrackerRegistry`."""
        raise NotImplementedError


class MlflowCase(Case):
    def __init__(self, request):
        request.getfixturevalue("server_store")

    def tracker(self):
        from tracked_ckpt.integrations.mlflow import MlflowTracker

        return MlflowTracker()

    def held(self, destination):
        from support.mlflow_runs import logged_models

        models = logged_models(destination["run_id"], destination["experiment_id"])
        return [(int(m.tags["tracked_ckpt.epoch"]), m.tags["tracked_ckpt.sha256"]) for m in models]

    def permanent_error(self, tracker, destination, record, path):
        gone = {**destination, "run_id": "0" * 32}  # a run that does not exist (deleted, say)
        with pytest.raises(Exception) as caught:
            tracker.log_checkpoint(record, path, gone)
        return caught.value

    def registry_scope(self, tracker, destination):
        registry = registry_of(tracker)
        return registry, registry.scope(destination["run_id"], None)


class WandbCase(Case):
    """W&B offline: what the SDK wrote is read from the run's files; the server side is the fake after a sync."""

    PROJECT, ENTITY = "contract", "team"

    def __init__(self, request):
        self.root = request.getfixturevalue("wandb_env")
        self.dirs: list[str] = []

    def tracker(self):
        from tracked_ckpt.integrations.wandb import WandbTracker

        # A folder per tracker: W&B names an offline run's folder and log by the second and the run id, so a
        # run resumed within the same second would otherwise write over the first one's log.
        folder = self.root / "wandb_dir" / f"tracker-{len(self.dirs)}"
        folder.mkdir()
        self.dirs.append(str(folder))
        return WandbTracker(project=self.PROJECT, dir=folder)

    def _run_dirs(self, destination):
        from support.wandb_records import run_dirs

        return [d for folder in self.dirs for d in run_dirs(folder) if d.endswith("-" + destination["run_id"])]

    def held(self, destination):
        from support.wandb_records import logged_artifacts

        artifacts = [a for d in self._run_dirs(destination) for a in logged_artifacts(d)]
        return [(a.metadata["epoch"], a.metadata["sha256"]) for a in artifacts]

    def _synced(self, tracker, destination):
        """The fake W&B server after `wandb sync` of the run's offline folders, and a tracker talking to it."""
        from support.wandb_fake import FakeServer

        from tracked_ckpt.integrations.wandb import WandbTracker

        tracker.finish()
        server = FakeServer(entity=self.ENTITY, project=self.PROJECT)
        synced = [artifact for d in self._run_dirs(destination) for artifact in server.sync(d)]
        return server, synced, WandbTracker(project=self.PROJECT, api=server.api(), mode="online")

    def deleting(self, records):
        # An offline run's versions are on no server: `delete_checkpoint` keeps them (the contract's False);
        # what it deletes is a synced version on the server.
        tracker, destination, refs, _ = super().deleting(records)
        assert tracker.delete_checkpoint(refs[0], destination) is False
        server, synced, online = self._synced(tracker, destination)
        online_destination = {**destination, "mode": "online", "entity": self.ENTITY}
        api = server.api()

        def on_server():
            return [
                (a.metadata["epoch"], a.metadata["sha256"])
                for a in synced
                if api.artifact_exists(a.qualified_name, type=a.type)
            ]

        return online, online_destination, [a.qualified_name for a in synced], on_server

    def permanent_error(self, tracker, destination, record, path):
        assert type(tracker).is_permanent is Tracker.is_permanent
        pytest.skip("WandbTracker keeps Tracker.is_permanent's default: every error is retried with backoff")

    def registry_scope(self, tracker, destination):
        _, _, online = self._synced(tracker, destination)
        registry = registry_of(online)
        return registry, registry.scope(destination["run_id"], f"{self.ENTITY}/{self.PROJECT}")


class FolderCase(Case):
    """The minimal third-party tracker: only `start` and `log_checkpoint`, everything else the defaults."""

    def __init__(self, request):
        request.getfixturevalue("installed_folder_tracker")
        self.root = request.getfixturevalue("workdir")

    def tracker(self):
        return resolve_tracker("folder")

    def run_of(self, destination):
        return destination["root"]

    def held(self, destination):
        root = destination["root"]
        names = sorted(os.listdir(root)) if os.path.isdir(root) else []
        out = []
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                out.append((int(name.split("-e")[1][:4]), hashlib.sha256(f.read()).hexdigest()))
        return out

    def permanent_error(self, tracker, destination, record, path):
        assert type(tracker).is_permanent is Tracker.is_permanent
        pytest.skip("the folder tracker keeps Tracker.is_permanent's default: every error is retried with backoff")

    def registry_scope(self, tracker, destination):
        registry_of(tracker)  # raises the contract's one-line TrackerError
        raise AssertionError("the folder tracker has no registry")


CASES = {"mlflow": MlflowCase, "wandb": WandbCase, "folder": FolderCase}


@pytest.fixture(params=list(CASES))
def case(request):
    return CASES[request.param](request)


@pytest.fixture
def records(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    return [make_record(folder, epoch) for epoch in (1, 2)]


def test_start_gives_a_json_destination_and_logs_every_checkpoint_once(case, records):
    tracker = case.tracker()
    destination = tracker.start()
    assert pickle.loads(pickle.dumps(destination)) == destination
    assert json.loads(json.dumps(destination)) == destination  # it is written to the durable spool
    refs = [tracker.log_checkpoint(record, path, destination, first_attempt=True) for record, path in records]
    tracker.finish()
    assert all(isinstance(ref, str) and ref for ref in refs) and len(set(refs)) == 2
    assert case.held(destination) == [(r.epoch, r.sha256) for r, _ in records]


def test_start_again_with_the_destination_logs_into_the_same_run(case, records):
    first = case.tracker()
    destination = first.start()
    first.log_checkpoint(*records[0], destination)
    first.finish(success=False)  # the job died; a restarted one resumes
    later = case.tracker()
    again = later.start(resume=destination)
    later.log_checkpoint(*records[1], again)
    later.finish()
    assert case.run_of(again) == case.run_of(destination)
    assert case.held(destination) == [(r.epoch, r.sha256) for r, _ in records]


def test_logging_the_same_record_twice_keeps_one_version(case, records):
    """The publisher's retry, each from a fresh background thread (`log_checkpoint` runs off the training thread)."""
    tracker = case.tracker()
    destination = tracker.start()
    record, path = records[0]
    refs = []
    for _ in range(2):
        worker = threading.Thread(target=lambda: refs.append(tracker.log_checkpoint(record, path, destination)))
        worker.start()
        worker.join()
    tracker.finish()
    assert len(refs) == 2 and refs[0] == refs[1]
    assert case.held(destination) == [(record.epoch, record.sha256)]


def test_delete_removes_the_checkpoint_or_says_it_kept_it(case, records):
    tracker, destination, refs, held = case.deleting(records)
    before = held()
    assert before == [(r.epoch, r.sha256) for r, _ in records]
    gone = tracker.delete_checkpoint(refs[0], destination)
    assert isinstance(gone, bool)
    assert held() == (before[1:] if gone else before)  # False means kept, never half-deleted
    expected = not isinstance(case, FolderCase)  # the folder tracker keeps the default: it cannot delete
    assert gone is expected
    if gone:
        assert tracker.delete_checkpoint(refs[0], destination) is True  # already gone counts as gone
    tracker.finish()


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_a_transient_error_is_retried(case, error):
    assert case.tracker().is_permanent(error) is False


def test_an_error_no_retry_can_fix_is_permanent(case, records):
    tracker = case.tracker()
    destination = tracker.start()
    error = case.permanent_error(tracker, destination, *records[0])
    tracker.finish()
    assert tracker.is_permanent(error) is True, repr(error)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_of_a_configured_tracker_is_the_configuration_and_logs_on_its_own(case, records, how):
    """KerasTuner deep-copies callbacks per trial, Ray pickles them: a copy keeps the class and its settings,
    and shares no run; `tracked-ckpt sync` logs with a fresh one into the spooled destination."""
    tracker = case.tracker()
    duplicate = copy.deepcopy if how == "deepcopy" else (lambda t: pickle.loads(pickle.dumps(t)))
    before = duplicate(tracker)
    assert type(before) is type(tracker) and before is not tracker
    assert before.__getstate__() == tracker.__getstate__()
    destination = tracker.start()
    tracker.log_checkpoint(*records[0], destination)
    after = duplicate(tracker)  # taken mid-run: the configuration, not the run
    assert type(after) is type(tracker) and after.__getstate__() == before.__getstate__()
    after.log_checkpoint(*records[1], destination)
    after.finish()
    tracker.finish()
    assert case.held(destination) == [(r.epoch, r.sha256) for r, _ in records]


def test_a_registry_reads_back_what_was_logged(case, records):
    tracker = case.tracker()
    destination = tracker.start()
    for record, path in records:
        tracker.log_checkpoint(record, path, destination)
    tracker.finish()
    try:
        registry, scope = case.registry_scope(tracker, destination)
    except TrackerError as exc:
        pytest.skip(str(exc))
    listed = registry.search_checkpoints(scope)
    # Compared as a set: MLflow answers in its own order (newest first) and the registry helper sorts.
    assert sorted((c.record.epoch, c.record.sha256) for c in listed) == [(r.epoch, r.sha256) for r, _ in records]
    assert {c.run_id for c in listed} == {destination["run_id"]}


def test_job_keys_are_stored_on_the_run_and_find_it(case, records):
    tracker = case.tracker()
    try:
        keys = job_keys_of(tracker)
    except TypeError as exc:
        tracker.start()  # the tracker still logs; only resume by job key is refused
        pytest.skip(str(exc))
    if isinstance(case, WandbCase):
        pytest.skip("W&B stores job values in the run's summary on its server: see integrations/test_wandb_resume.py")
    destination = tracker.start()
    key = f"job-{os.getpid()}-{threading.get_native_id()}-{id(case)}"
    keys.set_job_info(destination, {"key": key, "lease": "holder-1"})
    info = keys.job_info(destination)
    assert (info.get("key"), info.get("lease")) == (key, "holder-1")
    found = keys.find_job(key)
    tracker.finish()
    assert found is not None and found["run_id"] == destination["run_id"]
