"""Refuse an unsupported Keras, MLflow or W&B version up front, with the pip command that fixes it.

The supported ranges are the ones `pyproject.toml` declares (read back from the
installed package's metadata, so there is one source of truth). pip enforces
them at install time, but notebook images and pinned stacks often hold a version
installed some other way, and an old Keras would otherwise crash deep inside the
first save. Set `TRACKED_CKPT_SKIP_VERSION_CHECK=1` to try an untested version
anyway.

This module only reads package metadata: it never imports the packages it checks.
"""

from __future__ import annotations

import functools
import importlib.metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from tracked_ckpt import settings
from tracked_ckpt.errors import UnsupportedVersionError as UnsupportedVersionError

DISTRIBUTION = "tracked-ckpt"


def check_supported(*packages: str, extra: str | None = None) -> None:
    """Raise `UnsupportedVersionError` if an installed package is outside tracked-ckpt's declared range.

    Args:
        packages: distribution names to check (`"keras"`, `"mlflow"`, `"sqlalchemy"`, ...).
            A package that is not installed, or that tracked-ckpt declares no
            range for, is left alone (a missing tracker SDK has its own message).
        extra: the extra whose requirements apply as well as the core ones
            (`"mlflow"`, `"wandb"`); None checks the core dependencies only.

    Example:

    ```python
    from tracked_ckpt.versions import check_supported
    check_supported("keras")                      # before touching Keras internals
    check_supported("mlflow", "sqlalchemy", extra="mlflow")
    ```
    """
    if settings.skip_version_check():
        return
    ranges = declared_ranges(extra)
    for package in packages:
        requirement = ranges.get(_normalize(package))
        installed = _installed_version(package)
        if requirement is None or installed is None:
            continue
        try:
            supported = requirement.specifier.contains(Version(installed), prereleases=True)
        except InvalidVersion:
            continue  # a local build with a non-PEP 440 version: nothing reliable to compare
        if not supported:
            spec = requirement.name + ",".join(sorted(map(str, requirement.specifier), key=_lower_bound_first))
            raise UnsupportedVersionError(
                f"{requirement.name} {installed} is installed, but {DISTRIBUTION} {_own_version()} "
                f"supports {spec}: pip install '{spec}' (or set {settings.SKIP_VERSION_CHECK}=1 to try it anyway)."
            )


@functools.cache
def declared_ranges(extra: str | None = None) -> dict[str, Requirement]:
    """The version ranges tracked-ckpt declares: core dependencies plus those of `extra`, by normalized name.

    Empty when tracked-ckpt is not installed as a distribution (e.g. run from a
    source tree), in which case nothing is checked.
    """
    try:
        lines = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    environment = {"extra": extra or ""}
    ranges: dict[str, Requirement] = {}
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is None or requirement.marker.evaluate(environment):
            ranges[_normalize(requirement.name)] = requirement
    return ranges


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _own_version() -> str:
    return _installed_version(DISTRIBUTION) or "(source tree)"


def _lower_bound_first(specifier: str) -> tuple[bool, str]:
    return (not specifier.startswith(">"), specifier)


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")
