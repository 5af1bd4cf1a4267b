"""Git provenance of the launching repository for jobs that train elsewhere (sweep trials, chdir'ing jobs)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest
from support.helpers import CHILDREN, git, head, make_data, make_model, make_repo
from test_git import pytestmark, warnings_from  # noqa: F401 (marks: git required, isolated_git)

from tracked_ckpt.git import GitInfo, capture_for_job
from tracked_ckpt.settings import GIT_REPO as REPO_ENV


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / "launch", commits=2, branch="sweep")


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """The job's working directory: outside any repository (like a Ray trial's folder)."""
    folder = tmp_path / "trial-folder"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv(REPO_ENV, raising=False)
    monkeypatch.delenv("TUNE_ORIG_WORKING_DIR", raising=False)
    return folder


def test_explicit_repository_wins(repo, elsewhere, tmp_path, monkeypatch):
    other = make_repo(tmp_path / "other", commits=1)
    monkeypatch.setenv(REPO_ENV, str(other))
    assert capture_for_job(repo=repo).commit == head(repo)


def test_environment_variable_names_the_repository(repo, elsewhere, monkeypatch):
    monkeypatch.setenv(REPO_ENV, str(repo / "subfolder-that-need-not-exist" / ".."))
    info = capture_for_job()
    assert (info.commit, info.branch) == (head(repo), "sweep")


def test_folder_the_job_started_in(repo, elsewhere):
    assert capture_for_job(started_in=str(repo)).commit == head(repo)


def test_ray_tune_driver_folder(repo, elsewhere, monkeypatch):
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", str(repo))
    assert capture_for_job().commit == head(repo)


def test_cwd_still_first_among_guesses(repo, tmp_path, monkeypatch):
    other = make_repo(tmp_path / "other", commits=1)
    monkeypatch.chdir(other)
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", str(repo))
    assert capture_for_job().commit == head(other)


def test_explicit_path_that_is_not_a_repository_is_not_replaced_by_a_guess(repo, elsewhere, caplog):
    caplog.set_level(logging.WARNING, logger="tracked_ckpt")
    assert capture_for_job(repo=elsewhere, started_in=str(repo)) == GitInfo()
    assert "not inside a git repository" in warnings_from(caplog)[0].getMessage()


def test_nothing_found_says_how_to_fix(elsewhere, caplog):
    caplog.set_level(logging.WARNING, logger="tracked_ckpt")
    assert capture_for_job() == GitInfo()
    (warning,) = warnings_from(caplog)
    assert "git_repo=" in warning.getMessage() and REPO_ENV in warning.getMessage()


def test_main_script_of_a_job_that_changes_directory(repo, tmp_path):
    script = repo / "train.py"  # the repository is found through the main script's path: it lives there
    shutil.copyfile(CHILDREN / "capture_from_elsewhere.py", script)
    git(repo, "add", "train.py")
    git(repo, "commit", "-q", "-m", "script")
    env = {k: v for k, v in os.environ.items() if k not in (REPO_ENV, "TUNE_ORIG_WORKING_DIR")}
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path), source],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == head(repo)


def test_callback_records_the_repository_it_was_made_in_after_a_chdir(repo, elsewhere, embedded_store, monkeypatch):
    from tracked_ckpt import TrackedModelCheckpoint, list_checkpoints

    monkeypatch.chdir(repo)
    made_here = TrackedModelCheckpoint(str(elsewhere / "a-{epoch}.keras"))
    explicit = TrackedModelCheckpoint(str(elsewhere / "b-{epoch}.keras"), git_repo=repo)
    monkeypatch.chdir(elsewhere)  # e.g. a job moving into its scratch folder
    x, y = make_data()
    for callback in (made_here, explicit):
        make_model().fit(x, y, epochs=1, verbose=0, callbacks=[callback])
        (checkpoint,) = list_checkpoints()
        assert (checkpoint.record.git_commit, checkpoint.record.git_branch) == (head(repo), "sweep")


def test_a_study_warns_once_per_process_and_reason_then_logs_at_debug_level(elsewhere, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="tracked_ckpt")
    for _ in range(3):  # three trials of a study, in one process
        assert capture_for_job() == GitInfo()
    assert capture_for_job(repo=tmp_path / "not-a-repo") == GitInfo()  # another reason: warned about once too
    assert capture_for_job(repo=tmp_path / "not-a-repo") == GitInfo()
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "Git provenance" in r.getMessage()]
    assert [level for level, _ in said] == [
        logging.WARNING,
        logging.DEBUG,
        logging.DEBUG,
        logging.WARNING,
        logging.DEBUG,
    ]
    assert "git_repo=" in said[0][1] and said[1][1] == said[0][1]
