"""A pytest plugin that makes importing a tracker SDK (mlflow, wandb) fail, as in an install without them.

`python -m pytest -p support.no_trackers FILE` (with `tests/` on `PYTHONPATH`) runs FILE as a user
without the `[mlflow]` or `[wandb]` extra would: any import of either, by a test, a fixture or the
package, raises `ImportError`. Each refused import is noted and listed at the end of the run
("tracker SDK imports refused: ..."), so an import the package caught and went on from is seen too.
"""

from __future__ import annotations

import importlib.abc
import sys

TRACKER_SDKS = ("mlflow", "wandb")
refused: list[str] = []


class NoTrackerSdk(importlib.abc.MetaPathFinder):
    """Refuses the tracker SDKs and their submodules; every other import goes on to the next finder."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in TRACKER_SDKS:
            refused.append(fullname)
            raise ImportError(f"{fullname} is blocked: this test run has no tracker SDK", name=fullname)
        return None


already = [name for name in sys.modules if name.partition(".")[0] in TRACKER_SDKS]
if already:
    raise RuntimeError(f"tracker SDKs imported before the blocker: {already}")
sys.meta_path.insert(0, NoTrackerSdk())


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"tracker SDK imports refused: {sorted(set(refused)) or 'none'}")
