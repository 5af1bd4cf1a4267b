"""A minimal third-party tracker: only the two required methods (tests/support/folder_plugin.py installs it).

The test copies this file into a throwaway site-packages folder with a dist-info that
registers `folder = folder_tracker:FolderTracker` in the `tracked_ckpt.trackers` group.
"""

import os
import shutil

from tracked_ckpt.tracker import Tracker


class FolderTracker(Tracker):
    """Copies each checkpoint into `<cwd>/logged` as `<name>-<sha256[:12]>`."""

    name, display_name = "folder", "a folder"

    def start(self, resume=None):
        return dict(resume or {"root": os.path.abspath("logged")})

    def log_checkpoint(self, record, path, destination, first_attempt=False):
        os.makedirs(destination["root"], exist_ok=True)
        target = os.path.join(destination["root"], f"{record.name}-{record.sha256[:12]}")
        shutil.copyfile(path, target)
        return target
