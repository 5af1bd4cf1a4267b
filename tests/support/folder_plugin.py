"""`installed_folder_tracker`: tests/plugins/folder_tracker.py installed as a third-party package would be.

A pytest plugin (`tests/conftest.py` loads it), used by tests/test_tracker.py and the tracker contract suite.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

# Only the two required methods: everything else comes from the base class's defaults.
PLUGIN = Path(__file__).resolve().parent.parent / "plugins" / "folder_tracker.py"


@pytest.fixture
def installed_folder_tracker(tmp_path_factory, monkeypatch):
    """A package `folder_tracker` installed with an entry point, as `pip install` would leave it."""
    site = tmp_path_factory.mktemp("site-packages")
    shutil.copyfile(PLUGIN, site / "folder_tracker.py")
    dist_info = site / "folder_tracker-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: folder-tracker\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[tracked_ckpt.trackers]\nfolder = folder_tracker:FolderTracker\n")
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("folder_tracker", None)
