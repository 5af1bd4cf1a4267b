"""Compatibility sessions: the version ranges pyproject.toml declares, tested at both ends.

- `floor`: the oldest Python and the lowest version of every dependency we declare
  (read from pyproject.toml, so raising a floor there moves this session with it).
- `newest`: the newest Python here and the newest release of everything the registry serves.

Each runs the tests that touch the integrations (callback save modes, registry round trip,
W&B offline, CLI, the version check) in its own virtualenv under `.nox/`, on Keras's JAX
backend: a CPU jaxlib is ~90 MB against ~600 MB for TensorFlow, for every Python, and it
exercises a second backend. `make test` runs both after the main suite.

    .venv/bin/nox                 # both sessions (venvs are reused: a re-run installs nothing new)
    .venv/bin/nox -s floor        # one of them
"""

from __future__ import annotations

import glob
import os
import tomllib

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

nox.options.sessions = ["floor", "newest"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True  # a session that cannot run must fail, not skip

NEWEST_PYTHON = "3.13"
TRACKER_EXTRAS = ("mlflow", "wandb")
# The floor also installs pyfastcdc (the `incremental` extra) at its floor, 0.3.1 (constraints.txt's pin):
# the incremental W&B fit below runs on the oldest W&B and Python too.
FLOOR_EXTRAS = (*TRACKER_EXTRAS, "incremental")
# Declared floors that the trackers' own dependencies raise far above ours, so they cannot be installed
# together: typing_extensions 4.4 (`override`) against pydantic, alembic and optree, which need 4.10 to 4.16.
FLOOR_SET_BY_OTHERS = ("typing-extensions",)
# The package's own test-only needs (the suite's [test] extra also pulls servers and a browser).
TEST_TOOLS = ("pytest>=8", "jax[cpu]")
TESTS = [
    "tests/test_versions.py",
    "tests/test_callback.py",
    "tests/test_session.py::test_copies_and_pickles_are_independent_callbacks_before_and_after_a_fit",
    "tests/test_session.py::test_keyboard_interrupt_then_another_fit_gives_two_ended_runs",
    "tests/test_session.py::test_callbacks_of_one_fit_share_its_run",
    "tests/test_cli.py::test_ls_show_promote_pull",
    "tests/test_registry.py::test_promote_picks_the_true_best_with_missing_metrics",
    "tests/test_registry.py::test_load_by_alias_predicts_like_the_local_file",
    "tests/test_registry.py::test_list_checkpoints_filters_by_schema_fields",
    "tests/integrations/test_wandb.py::test_per_epoch_saves_one_version_each_with_epoch_and_best_aliases",
    "tests/integrations/test_wandb.py::test_batch_saves_get_step_aliases",
    "tests/integrations/test_wandb.py::test_save_best_only_logs_only_improving_epochs",
    "tests/integrations/test_wandb.py::test_weights_only_checkpoints",
    "tests/integrations/test_wandb.py::test_offline_run_synced_into_the_fake_then_restored_by_alias",
    "tests/integrations/test_wandb.py::test_mlflow_and_wandb_each_get_each_checkpoint_once",
    # Reads the transaction log each W&B of the range writes, with that W&B's own protobuf classes.
    "tests/integrations/test_wandb_offline.py::test_an_offline_fit_is_listed_ranked_and_loaded_from_its_folder",
    "tests/integrations/test_wandb_offline.py::test_a_log_cut_anywhere_reads_as_the_checkpoints_written_before_the_cut",
]
# Only where the `incremental` extra is installed (the test skips without pyfastcdc).
FLOOR_ONLY_TESTS = [
    "tests/integrations/test_wandb.py::test_a_fit_with_incremental_storage_logs_manifests_and_loads_back_offline",
]

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyproject.toml"), "rb") as _f:
    PROJECT = tomllib.load(_f)["project"]


def declared_requirements() -> list[Requirement]:
    """The core dependencies and those of the floor's extras, as pyproject.toml declares them."""
    lines = PROJECT["dependencies"] + [
        line for extra in FLOOR_EXTRAS for line in PROJECT["optional-dependencies"][extra]
    ]
    return [Requirement(line) for line in lines if not line.startswith(PROJECT["name"])]


def floor_pins() -> list[str]:
    """`name==lowest` for every declared requirement that has a lower bound."""
    pins = []
    for requirement in declared_requirements():
        if canonicalize_name(requirement.name) in FLOOR_SET_BY_OTHERS:
            continue
        lows = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
        if lows:
            pins.append(f"{requirement.name}=={max(lows)}")
    return pins


def oldest_python() -> str:
    """The oldest Python `requires-python` admits (">=3.10" -> "3.10")."""
    (spec,) = [s for s in Requirement(f"python{PROJECT['requires-python']}").specifier if s.operator == ">="]
    return ".".join(spec.version.split(".")[:2])


def _put_pyenv_pythons_on_path(*versions: str) -> None:
    """pyenv's shims only run the selected Python: put the other installed ones' own bin folders on PATH."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    for version in versions:
        found = sorted(
            glob.glob(os.path.join(root, "versions", f"{version}.*", "bin")),
            key=lambda path: Version(os.path.basename(os.path.dirname(path))),
        )
        if found:
            os.environ["PATH"] = found[-1] + os.pathsep + os.environ.get("PATH", "")


FLOOR_PYTHON = oldest_python()
_put_pyenv_pythons_on_path(FLOOR_PYTHON, NEWEST_PYTHON)


def run_tests(session: nox.Session, *tests: str) -> None:
    session.run(
        "python",
        "-c",
        "import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in "
        "('keras', 'jax', 'mlflow', 'sqlalchemy', 'wandb', 'GitPython', 'tqdm')))",
    )
    # `pytest`, not `python -m pytest`: the installed wheel is tested, not the source tree.
    session.run(
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *TESTS,
        *tests,
        *session.posargs,
        env={"KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@nox.session(python=FLOOR_PYTHON)
def floor(session: nox.Session) -> None:
    """The oldest Python and the lowest declared version of keras, mlflow, wandb, GitPython, tqdm, pyfastcdc."""
    constraints = os.path.join(session.create_tmp(), "floor-constraints.txt")
    with open(constraints, "w") as f:
        f.write("\n".join(floor_pins()) + "\n")
    session.install("-c", constraints, f".[{','.join(FLOOR_EXTRAS)}]", *TEST_TOOLS)
    run_tests(session, *FLOOR_ONLY_TESTS)


@nox.session(python=NEWEST_PYTHON)
def newest(session: nox.Session) -> None:
    """The newest Python here and the newest release the registry serves of every dependency."""
    session.install("--upgrade", "--upgrade-strategy", "eager", f".[{','.join(TRACKER_EXTRAS)}]", *TEST_TOOLS)
    run_tests(session)
