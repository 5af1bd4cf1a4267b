"""A job's main script that changes directory before asking for git provenance (tests/test_git_launch.py).

The test copies this file into a repository and commits it there, since the
repository is found through the main script's path. `python train.py FOLDER SOURCE`:
chdir to FOLDER (outside the repository), put the project's SOURCE folder first on
sys.path, and print the commit `capture_for_job()` finds.
"""

import os
import sys


def main(folder: str, source: str) -> None:
    os.chdir(folder)
    sys.path.insert(0, source)
    from tracked_ckpt.git import capture_for_job

    print(capture_for_job().commit)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
