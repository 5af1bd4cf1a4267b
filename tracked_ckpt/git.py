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
from urllib.parse import urlsplit, urlunsplit

logger = logging.getLogger("tracked_ckpt")

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
    logs one warning and returns the fields it could determine.

    Example:
        >>> info = capture()  # doctest: +SKIP
        >>> info.commit, info.branch, info.dirty, info.remote  # doctest: +SKIP
        ('9c1e4a7b…', 'main', False, 'https://github.com/org/repo.git')
    """
    path = os.fspath(path) if path is not None else os.getcwd()
    try:
        import git  # GitPython; imports fail when the git executable is absent
    except Exception as exc:  # ImportError, or git.exc.GitError raised at import time
        logger.warning("Git provenance not recorded: git is not available (%s).", _first_line(exc))
        return GitInfo()
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        logger.warning("Git provenance not recorded: %s is not inside a git repository.", path)
        return GitInfo()
    except Exception as exc:
        logger.warning("Git provenance not recorded: %s", _first_line(exc))
        return GitInfo()
    try:
        return _describe(repo)
    finally:
        repo.close()


def _describe(repo) -> GitInfo:
    try:
        commit = repo.head.commit.hexsha
    except ValueError:  # no commits yet: HEAD points at an unborn branch
        logger.warning("Git provenance incomplete: the repository at %s has no commits.", repo.working_dir)
        return GitInfo(branch=_branch(repo), dirty=_dirty(repo), remote=_remote(repo))
    except Exception as exc:
        logger.warning("Git provenance not recorded: %s", _first_line(exc))
        return GitInfo()
    return GitInfo(commit=commit, branch=_branch(repo), dirty=_dirty(repo), remote=_remote(repo))


def _branch(repo) -> str | None:
    try:
        return None if repo.head.is_detached else repo.active_branch.name
    except Exception:
        return None


def _dirty(repo) -> bool | None:
    try:
        # Untracked files (checkpoints, mlflow.db, ...) do not change the code that ran.
        return repo.is_dirty(untracked_files=False)
    except Exception:
        return None


def _remote(repo) -> str | None:
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
