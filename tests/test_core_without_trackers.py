"""The core's own tests run where no tracker SDK can be imported: they need neither extra.

Each listed file tests the core alone (schema, settings, spool and publisher with the fake
tracker, progress, git capture, version checks, a third-party tracker, logged code). It runs in a pytest
subprocess whose `support.no_trackers` plugin makes `import mlflow` and `import wandb` fail,
so a module-level tracker import in conftest, the support code, a test or the package shows
up as a failure here, and one the package caught and went on from shows up in the summary.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
CORE_TESTS = [
    "test_record.py",
    "test_settings.py",
    "test_spool.py",
    "test_stall.py",
    "test_progress.py",
    "test_git.py",
    "test_versions.py",
    "test_tracker.py",
    "test_fits.py",
    "test_logged_code.py",
]


@pytest.mark.slow
def test_the_core_tests_pass_with_no_tracker_sdk_importable(tmp_path):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "support.no_trackers"]
    result = subprocess.run(
        [*command, "-o", "addopts=", *(os.path.join(TESTS, name) for name in CORE_TESTS)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "tracker SDK imports refused: none" in result.stdout, result.stdout[-4000:]
    assert " passed" in result.stdout.splitlines()[-1] and " failed" not in result.stdout.splitlines()[-1]
