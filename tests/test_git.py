"""Git provenance against real repositories built with the `git` CLI (no mocks of git)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.helpers import child, git, head, make_repo

from tracked_ckpt import git as tgit
from tracked_ckpt.git import GitInfo, capture, redact_remote

pytestmark = [
    pytest.mark.skipif(shutil.which("git") is None, reason="the git executable is required"),
    pytest.mark.usefixtures("isolated_git"),
]

GIT_PY = Path(tgit.__file__).resolve()


# -- helpers --------------------------------------------------------------------------------


def warnings_from(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tracked_ckpt" and r.levelno == logging.WARNING]


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path / "repo", commits=2)


# -- clean, dirty, detached -----------------------------------------------------------------


def test_clean_repo(repo, caplog):
    caplog.set_level(logging.WARNING, logger="tracked_ckpt")
    info = capture(repo)
    assert info == GitInfo(commit=head(repo), branch="main", dirty=False, remote=None)
    assert len(info.commit) == 40
    assert warnings_from(caplog) == []


def test_branch_name_with_slash(repo):
    git(repo, "checkout", "-q", "-b", "feature/resnet-sweep")
    assert capture(repo).branch == "feature/resnet-sweep"


def test_default_path_is_cwd(repo, monkeypatch):
    monkeypatch.chdir(repo)
    assert capture().commit == head(repo)
    assert capture(None).commit == head(repo)


def test_accepts_pathlike_and_str(repo):
    assert capture(repo) == capture(str(repo))


def test_modified_tracked_file_is_dirty(repo):
    (repo / "train.py").write_text("print('changed')\n")
    info = capture(repo)
    assert info.dirty is True
    assert info.commit == head(repo)


def test_staged_change_is_dirty(repo):
    (repo / "train.py").write_text("print('staged')\n")
    git(repo, "add", "train.py")
    assert capture(repo).dirty is True


def test_deleted_tracked_file_is_dirty(repo):
    (repo / "train.py").unlink()
    assert capture(repo).dirty is True


def test_untracked_file_alone_is_not_dirty(repo):
    # Documented policy: untracked files (checkpoints, mlflow.db, ...) do not count.
    (repo / "model-e0001.keras").write_bytes(b"\0" * 16)
    (repo / "mlflow.db").write_bytes(b"")
    assert git(repo, "status", "--porcelain") != ""  # git itself does see them
    assert capture(repo).dirty is False


def test_detached_head(repo):
    first = git(repo, "rev-parse", "HEAD~1")
    git(repo, "checkout", "-q", "--detach", first)
    info = capture(repo)
    assert info.branch is None
    assert info.commit == first
    assert info.dirty is False


def test_detached_head_at_tag(repo):
    git(repo, "tag", "v1")
    git(repo, "checkout", "-q", "v1")
    info = capture(repo)
    assert info.branch is None
    assert info.commit == head(repo)


# -- degraded situations: one warning, never an exception -----------------------------------


def test_repo_without_commits(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tracked_ckpt")
    empty = make_repo(tmp_path / "empty", commits=0, branch="trunk")
    info = capture(empty)
    assert info.commit is None
    assert info.remote is None
    # An unborn branch still has a name, and nothing is modified.
    assert info.branch == "trunk"
    assert info.dirty is False
    warns = warnings_from(caplog)
    assert len(warns) == 1, [r.getMessage() for r in warns]
    assert "no commits" in warns[0].getMessage()


def test_repo_without_commits_but_staged_file(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tracked_ckpt")
    empty = make_repo(tmp_path / "empty", commits=0)
    (empty / "a.py").write_text("x = 1\n")
    git(empty, "add", "a.py")
    info = capture(empty)
    assert info.commit is None
    assert len(warnings_from(caplog)) == 1


def test_not_a_repository(tmp_path, caplog):
    outside = tmp_path / "plain"
    outside.mkdir()
    probe = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=outside, capture_output=True, text=True)
    if probe.returncode == 0:
        pytest.skip(f"tmp_path {outside} is inside a git repository ({probe.stdout.strip()})")
    caplog.set_level(logging.WARNING, logger="tracked_ckpt")
    assert capture(outside) == GitInfo()
    assert GitInfo() == GitInfo(None, None, None, None)
    warns = warnings_from(caplog)
    assert len(warns) == 1
    assert str(outside) in warns[0].getMessage()


def test_nonexistent_path(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tracked_ckpt")
    assert capture(tmp_path / "does" / "not" / "exist") == GitInfo()
    assert len(warnings_from(caplog)) == 1


def test_subdirectory_searches_upwards(repo, caplog):
    caplog.set_level(logging.WARNING, logger="tracked_ckpt")
    sub = repo / "src" / "pkg" / "deep"
    sub.mkdir(parents=True)
    info = capture(sub)
    assert info.commit == head(repo)
    assert info.branch == "main"
    assert info.dirty is False
    assert warnings_from(caplog) == []


def test_shallow_clone(repo, tmp_path):
    dst = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(dst))
    assert (dst / ".git" / "shallow").exists()
    info = capture(dst)
    assert info.commit == head(repo)
    assert info.branch == "main"
    assert info.dirty is False
    # The clone's origin is a local file URL: no credentials, kept as-is.
    assert info.remote == f"file://{repo}"


def test_worktree(repo, tmp_path):
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "wt-branch", str(wt))
    info = capture(wt)
    assert info.commit == head(repo)
    assert info.branch == "wt-branch"
    assert info.dirty is False


# -- remotes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected, secrets",
    [
        (
            "https://user:ghp_SECRETTOKEN@github.com/org/repo.git",
            "https://github.com/org/repo.git",
            ["ghp_SECRETTOKEN", "user"],
        ),
        (
            "https://x-access-token:SECRET@github.com/org/repo",
            "https://github.com/org/repo",
            ["SECRET", "x-access-token"],
        ),
        ("https://SECRETONLY@host/repo.git", "https://host/repo.git", ["SECRETONLY"]),
        (
            "http://user:pass@host:8443/path?token=SECRET#frag",
            "http://host:8443/path",
            ["SECRET", "pass", "user", "token", "frag"],
        ),
        ("ssh://git:SECRET@host/repo", "ssh://host/repo", ["SECRET"]),
        ("ssh://git:SECRET@host:2222/org/repo.git", "ssh://host:2222/org/repo.git", ["SECRET"]),
        ("git@github.com:org/repo.git", "github.com:org/repo.git", []),
        ("oauth2:SECRET@gitlab.com:org/repo.git", "gitlab.com:org/repo.git", ["SECRET", "oauth2"]),
        # '@' inside a password: percent-encoded (what git needs) and raw.
        ("https://user:p%40SECRET@github.com/org/repo", "https://github.com/org/repo", ["SECRET"]),
        ("https://user:p@SECRET@github.com/org/repo", "https://github.com/org/repo", ["SECRET"]),
        # IPv6 host with credentials and a port.
        ("https://user:SECRET@[::1]:8080/repo.git", "https://[::1]:8080/repo.git", ["SECRET"]),
        # Surrounding whitespace (as read from a config file) is not part of the URL.
        ("  https://tok:SECRET@host/r.git\n", "https://host/r.git", ["SECRET"]),
        # Plain remotes without credentials survive unchanged.
        ("https://github.com/org/repo.git", "https://github.com/org/repo.git", []),
        ("github.com:org/repo.git", "github.com:org/repo.git", []),
        ("file:///srv/git/repo.git", "file:///srv/git/repo.git", []),
        ("/srv/git/repo.git", "/srv/git/repo.git", []),
        ("../sibling/repo", "../sibling/repo", []),
    ],
)
def test_redact_remote(url, expected, secrets):
    redacted = redact_remote(url)
    assert redacted == expected
    for secret in secrets:
        assert secret not in redacted
    # Redaction is idempotent.
    assert redact_remote(redacted) == redacted


@pytest.mark.parametrize(
    "url",
    [
        "not a url with spaces",
        "https://[bad",
        "https://host:notaport/repo",
        "",
        "   ",
        "https:///no-host/repo",
        "just-a-word",
        "user:SECRET@",
        "SECRET@localhost",
    ],
)
def test_redact_unparsable_remote_is_dropped(url):
    assert redact_remote(url) is None


@pytest.mark.parametrize(
    "url, secret",
    [
        # A raw '@' in the password of an scp-style remote: the user part cannot be matched,
        # and the whole string must not be mistaken for host "user" + path "p@SECRET@...".
        ("user:p@SECRET@github.com:org/repo.git", "SECRET"),
        # An scp-style remote whose host part has characters git hosts never use.
        ("oauth2:SECRET@git+lab.com:org/repo.git", "SECRET"),
        # A raw '/' in a token: urlsplit ends the netloc at the '/', so the tail of the
        # token and the real host land in the path.
        ("https://ghp_abc/SECRET@github.com/org/repo.git", "SECRET"),
        ("https://user:123/SECRET@github.com/org/repo.git", "SECRET"),
    ],
)
def test_redact_remote_fails_closed_on_ambiguous_credentials(url, secret):
    assert redact_remote(url) is None


def test_capture_redacts_token_in_origin(repo):
    token = "ghp_SUPERSECRETTOKEN123"
    git(repo, "remote", "add", "origin", f"https://x-access-token:{token}@github.com/org/repo.git")
    info = capture(repo)
    assert info.remote == "https://github.com/org/repo.git"
    assert token not in repr(info)
    assert token not in str(info)
    assert "x-access-token" not in repr(info)
    assert info.commit == head(repo)


def test_capture_redacts_scp_remote_with_user(repo):
    git(repo, "remote", "add", "origin", "oauth2:SECRET@gitlab.com:org/repo.git")
    info = capture(repo)
    assert info.remote == "gitlab.com:org/repo.git"
    assert "SECRET" not in repr(info)


def test_capture_unparsable_remote_is_dropped(repo):
    git(repo, "remote", "add", "origin", "https://[bad")
    info = capture(repo)
    assert info.remote is None
    assert info.commit == head(repo)


def test_capture_prefers_origin(repo):
    git(repo, "remote", "add", "aaa-fork", "https://a:SECRET@example.com/fork.git")
    git(repo, "remote", "add", "origin", "https://example.com/upstream.git")
    assert capture(repo).remote == "https://example.com/upstream.git"


def test_capture_uses_first_remote_without_origin(repo):
    git(repo, "remote", "add", "upstream", "https://u:SECRET@example.com/up.git")
    info = capture(repo)
    assert info.remote == "https://example.com/up.git"
    assert "SECRET" not in repr(info)


# -- no git executable ----------------------------------------------------------------------


@pytest.mark.parametrize("refresh", ["quiet", None, "warn", "error"])
def test_git_executable_absent(repo, tmp_path, refresh):
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    env = {"PATH": str(empty_bin), "HOME": str(tmp_path), "GIT_CONFIG_GLOBAL": os.devnull}
    if refresh is not None:
        env["GIT_PYTHON_REFRESH"] = refresh
    proc = subprocess.run(
        child("capture_without_git", GIT_PY, repo),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1, proc.stdout
    assert json.loads(results[0][len("RESULT ") :]) == [None, None, None, None]
    warns = [line for line in proc.stderr.splitlines() if line.startswith("LOG tracked_ckpt WARNING")]
    assert len(warns) == 1, proc.stderr
    assert "Git provenance not recorded" in warns[0]
    assert "Traceback" not in proc.stderr
