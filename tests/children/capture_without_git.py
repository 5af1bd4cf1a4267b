"""Git provenance where no git executable is on PATH (tests/test_git.py).

`python capture_without_git.py GIT_PY REPO`: load tracked_ckpt/git.py by its path
(importing the tracked_ckpt package would pull in Keras/TensorFlow), capture REPO,
and print `RESULT [commit, branch, dirty, remote]` as JSON; log lines go to stderr as
`LOG <logger> <level> <message>`.
"""

import importlib.util
import json
import logging
import sys


def main(git_py: str, repo: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="LOG %(name)s %(levelname)s %(message)s")
    spec = importlib.util.spec_from_file_location("tracked_ckpt_git_under_test", git_py)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    info = module.capture(repo)
    print("RESULT " + json.dumps([info.commit, info.branch, info.dirty, info.remote]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
