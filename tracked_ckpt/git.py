"""Git provenance of the training code, captured once per `fit`.

Credentials never leave this module: URL remotes lose their user and
password/token, scp-style remotes keep only host and path, and a remote that
cannot be parsed is dropped (fail closed).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from tracked_ckpt import settings

if TYPE_CHECKING:
    import git  # GitPython; imported at run time only where used (it fails without the git executable)

logger = logging.getLogger("tracked_ckpt")

#: Working directories launchers record before moving a job elsewhere (Ray Tune's driver CWD).
LAUNCH_DIR_ENVS = ("TUNE_ORIG_WORKING_DIR",)

# Why provenance was missing, for each reason warned about in this process (`_not_recorded`).
_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()

# scp-like syntax: [user@]host:path (no scheme, no "//" after the colon).
_SCP_RE = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?P<host>[A-Za-z0-9.\-_]+):(?!//)(?P<path>[^\s]+)$")


@dataclasses.dataclass(frozen=True)
class GitInfo:
    """Commit, branch (None on a detached HEAD), dirty flag and redacted remote URL."""

    commit: str | None = None
    branch: str | None = None
    dirty: bool | None = None
    remote: str | None = None


def redact_remote(url: str) -> str | None:
    """Return `url` without any user, password or token, or None if it cannot be parsed.

    Example:
        >>> redact_remote("https://oauth2:ghp_secret@github.com/org/repo.git")
        'https://github.com/org/repo.git'
        >>> redact_remote("git@github.com:org/repo.git")
        'github.com:org/repo.git'
    """
    url = url.strip()
    if not url or any(ch.isspace() for ch in url):
        return None
    if "://" in url:
        try:
            parts = urlsplit(url)
            host = parts.hostname
            port = parts.port
        except ValueError:
            return None
        if not parts.scheme or (not host and parts.scheme != "file"):
            return None
        if "@" in parts.path:  # a raw '/' in a token pushed the credentials into the path
            return None
        netloc = host or ""
        if ":" in netloc:  # IPv6 literal
            netloc = f"[{netloc}]"
        if port:
            netloc += f":{port}"
        # Query strings and fragments can carry tokens too; a git remote needs neither.
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    match = _SCP_RE.match(url)
    if match:
        if "@" in match.group("path"):  # the user part did not match: credentials in the "path"
            return None
        return f"{match.group('host')}:{match.group('path')}"
    if url.startswith(("/", "./", "../")) and "@" not in url:
        return url  # a local path remote
    return None


def capture(path: str | os.PathLike[str] | None = None) -> GitInfo:
    """Describe the git repository containing `path` (default: the CWD), searching upwards.

    Never raises: outside a repository, without git, or on an empty repository it
    logs one warning (once per process for each reason; later ones at debug level)
    and returns the fields it could determine.

    Example (in a clone, `info.commit, info.branch, info.dirty, info.remote` is e.g.
    `('9c1e4a7b…', 'main', False, 'https://github.com/org/repo.git')`; outside one, nothing):
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     capture(folder).commit is None
        True
    """
    path = os.fspath(path) if path is not None else os.getcwd()
    try:
        import git  # GitPython; imports fail when the git executable is absent
    except Exception as exc:  # ImportError, or git.exc.GitError raised at import time
        _not_recorded("no git", "Git provenance not recorded: git is not available (%s).", _first_line(exc))
        return GitInfo()
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        _not_recorded("no repository", "Git provenance not recorded: %s is not inside a git repository.", path)
        return GitInfo()
    except Exception as exc:
        _not_recorded("git failed", "Git provenance not recorded: %s", _first_line(exc))
        return GitInfo()
    try:
        return _info_of(repo)
    finally:
        repo.close()


def capture_for_job(repo: str | os.PathLike[str] | None = None, started_in: str | None = None) -> GitInfo:
    """Provenance of the code a training job runs, even when the job runs in another folder.

    Sweep engines (Ray Tune) and many job scripts change directory before
    training, so the CWD alone is often not inside the repository. The first
    of these wins:

    1. `repo`, the caller's explicit repository path;
    2. the `TRACKED_CKPT_GIT_REPO` environment variable;
    3. the first of these folders that is inside a git repository: `started_in`
       (the CWD when the callback was made), the CWD now, the launcher's
       original folder (Ray Tune's `TUNE_ORIG_WORKING_DIR`), the folder of the
       `__main__` script (unless it is installed code, such as a Ray worker).

    An explicit repository (1 or 2) that is not a git repository is not
    replaced by a guess: it is warned about and nothing is recorded. Never raises.

    Example:
        ```python
        capture_for_job(repo="~/src/my-project").commit  # '9c1e4a7b…'
        ```
    """
    explicit = repo if repo is not None else settings.git_repo()
    if explicit is not None:
        return capture(os.path.expanduser(os.fspath(explicit)))
    candidates = [started_in, _cwd(), *(os.environ.get(name) for name in LAUNCH_DIR_ENVS), _main_script_dir()]
    for path in candidates:
        if path and _inside_repository(path):
            return capture(path)
    _not_recorded(
        "no repository for the job",
        "Git provenance not recorded: %s is not inside a git repository (nor the folder the job started "
        "in); pass git_repo= or set %s to the repository of the training code.",
        _cwd() or "the CWD",
        settings.GIT_REPO,
    )
    return GitInfo()


def _not_recorded(reason: str, message: str, *args: object) -> None:
    """Warn about missing provenance once per process and reason, then at debug level.

    A study runs many fits in one process (KerasTuner's trials, a loop of fits):
    one warning says it; the same one for every trial would bury the others.
    """
    with _WARNED_LOCK:  # captures run on background threads (`capture_in_background`)
        first = reason not in _WARNED
        _WARNED.add(reason)
    logger.log(logging.WARNING if first else logging.DEBUG, message, *args)


def _inside_repository(path: str) -> bool:
    try:
        import git

        git.Repo(path, search_parent_directories=True).close()
        return True
    except Exception:  # not a repository, no such path, or no git executable
        return False


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the folder was deleted under the process
        return None


def _main_script_dir() -> str | None:
    """The folder of the `__main__` script, unless it is installed code (site-packages, a venv's bin)."""
    path: str | None = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path:
        return None
    path = os.path.realpath(path)
    installed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if any(path.startswith(prefix + os.sep) for prefix in installed) or "site-packages" in path.split(os.sep):
        return None
    return os.path.dirname(path)


def _info_of(repo: git.Repo) -> GitInfo:
    try:
        commit = repo.head.commit.hexsha
    except ValueError:  # no commits yet: HEAD points at an unborn branch
        _not_recorded("no commits", "Git provenance incomplete: the repository at %s has no commits.", repo.working_dir)
        return GitInfo(branch=_branch(repo), dirty=_dirty(repo), remote=_remote(repo))
    except Exception as exc:
        _not_recorded("git failed", "Git provenance not recorded: %s", _first_line(exc))
        return GitInfo()
    return GitInfo(commit=commit, branch=_branch(repo), dirty=_dirty(repo), remote=_remote(repo))


def _branch(repo: git.Repo) -> str | None:
    try:
        return None if repo.head.is_detached else repo.active_branch.name
    except Exception:
        return None


def _dirty(repo: git.Repo) -> bool | None:
    try:
        # Untracked files (checkpoints, mlflow.db, ...) do not change the code that ran.
        return repo.is_dirty(untracked_files=False)
    except Exception:
        return None


def _remote(repo: git.Repo) -> str | None:
    try:
        remotes = list(repo.remotes)
    except Exception:
        return None
    if not remotes:
        return None
    remote = next((r for r in remotes if r.name == "origin"), remotes[0])
    try:
        urls = list(remote.urls)
    except Exception:
        return None
    return redact_remote(urls[0]) if urls else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def capture_in_background(
    repo: str | os.PathLike[str] | None = None, started_in: str | None = None
) -> Callable[[], GitInfo]:
    """Start `capture_for_job` on its own thread; the function returned waits for its answer.

    Reading a repository (and `git status` for the dirty flag) takes tens of
    milliseconds: a fit starts meanwhile, and its first save waits for it if need be.
    """
    found: list[GitInfo] = []
    thread = threading.Thread(
        target=lambda: found.append(capture_for_job(repo, started_in)), name="tracked-ckpt-git", daemon=True
    )
    thread.start()

    def result() -> GitInfo:
        thread.join()
        return found[0] if found else GitInfo()  # capture_for_job never raises; a crashed thread: none

    return result
