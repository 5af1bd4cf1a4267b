"""The supported-version check: ranges come from the installed package's metadata; refusals are one line.

An "installed" version other than the real one is a real distribution on the
path: a `<name>-<version>.dist-info` folder placed ahead of site-packages, which
`importlib.metadata` finds first, exactly as it would find a pinned old install.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from tracked_ckpt import settings
from tracked_ckpt.versions import UnsupportedVersionError, check_supported, declared_ranges


def shadow_distribution(root, name: str, version: str) -> None:
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.fixture
def shadowed(tmp_path, monkeypatch):
    """Make `importlib.metadata` see the given (name, version) pairs instead of the real installs."""
    monkeypatch.delenv(settings.SKIP_VERSION_CHECK, raising=False)

    def shadow(*pairs: tuple[str, str]) -> str:
        for name, version in pairs:
            shadow_distribution(tmp_path / "shadow", name, version)
        monkeypatch.syspath_prepend(str(tmp_path / "shadow"))
        return str(tmp_path / "shadow")

    return shadow


def test_ranges_are_the_ones_the_package_declares():
    core, with_mlflow = declared_ranges(), declared_ranges("mlflow")
    (keras_line,) = [
        line for line in importlib.metadata.requires("tracked-ckpt") if Requirement(line).name == "keras"
    ]  # not keras-tuner (the `tuner` extra)
    assert sorted(map(str, core["keras"].specifier)) == sorted(map(str, Requirement(keras_line).specifier))
    assert "mlflow" not in core and "sqlalchemy" not in core  # extras only apply when asked for
    assert str(with_mlflow["keras"]) == str(core["keras"])  # packaging 21 has no Requirement.__eq__
    assert with_mlflow["mlflow"].specifier.contains("3.4.0") and not with_mlflow["mlflow"].specifier.contains("3.3.2")
    assert not with_mlflow["sqlalchemy"].specifier.contains("2.1.0")  # mlflow < 3.9 breaks on it
    assert declared_ranges("wandb")["wandb"].specifier.contains("0.19.0")


def test_the_installed_versions_pass():
    check_supported("keras", "GitPython", "tqdm")
    check_supported("mlflow", "sqlalchemy", extra="mlflow")
    check_supported("wandb", extra="wandb")


@pytest.mark.parametrize(
    "name, version, extra, expected",
    [
        (
            "keras",
            "3.9.2",
            None,
            "keras 3.9.2 is installed, but tracked-ckpt {own} supports keras>=3.10,<3.17: "
            "pip install 'keras>=3.10,<3.17'",
        ),
        ("keras", "3.17.0", None, "pip install 'keras>=3.10,<3.17'"),
        (
            "mlflow",
            "3.3.2",
            "mlflow",
            "mlflow 3.3.2 is installed, but tracked-ckpt {own} supports mlflow>=3.4,<4: pip install 'mlflow>=3.4,<4'",
        ),
        (
            "SQLAlchemy",
            "2.1.0",
            "mlflow",
            "sqlalchemy 2.1.0 is installed, but tracked-ckpt {own} supports "
            "sqlalchemy<2.1: pip install 'sqlalchemy<2.1'",
        ),
        ("wandb", "0.18.7", "wandb", "pip install 'wandb>=0.19'"),
    ],
)
def test_an_unsupported_version_is_refused_in_one_line_naming_the_fix(shadowed, name, version, extra, expected):
    shadowed((name, version))
    with pytest.raises(UnsupportedVersionError) as caught:
        check_supported(name.lower(), extra=extra)
    message = str(caught.value)
    assert "\n" not in message
    assert expected.format(own=importlib.metadata.version("tracked-ckpt")) in message


def test_packages_without_a_declared_range_or_not_installed_are_left_alone(shadowed):
    shadowed(("numpy", "0.1"))
    check_supported("numpy", "not-a-real-package")
    check_supported("mlflow")  # the extra's range only applies when the extra is named


def test_the_check_can_be_skipped_on_purpose(shadowed, monkeypatch):
    shadowed(("keras", "3.9.2"))
    monkeypatch.setenv(settings.SKIP_VERSION_CHECK, "1")
    check_supported("keras")


def run_python(code: str, shadow: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([shadow, os.environ.get("PYTHONPATH", "")]), **env}
    environment.pop(settings.SKIP_VERSION_CHECK, None)
    # Outside the source tree, so the installed package is imported (as a user would).
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=environment,
        cwd=os.path.dirname(shadow),
        timeout=300,
    )


def test_an_old_keras_is_refused_when_the_callback_is_imported_before_any_training(shadowed):
    shadow = shadowed(("keras", "3.9.2"))
    result = run_python("from tracked_ckpt import TrackedModelCheckpoint", shadow)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tracked_ckpt.versions.UnsupportedVersionError: keras 3.9.2 is installed")
    assert "pip install 'keras>=3.10,<3.17'" in last


def test_an_old_mlflow_is_refused_when_the_tracker_is_chosen(shadowed):
    shadow = shadowed(("mlflow", "3.3.2"))
    code = (
        "from tracked_ckpt.tracker import resolve_tracker\n"
        "try:\n    resolve_tracker('mlflow')\n"
        "except Exception as exc:\n    print(f'{type(exc).__name__}: {exc}')\n"
    )
    result = run_python(code, shadow)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("UnsupportedVersionError: mlflow 3.3.2 is installed"), result.stdout
    assert "pip install 'mlflow>=3.4,<4'" in result.stdout
