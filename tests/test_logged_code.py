"""The logged code on its own: importable for a block only, and the one line when a class is missing.

Pure Python on a folder of modules, as `TrackerRegistry.fetch_code` leaves it; loading a real
checkpoint with it, in a fresh process, is in tests/test_loads_anywhere.py.
"""

from __future__ import annotations

import sys
import types

import pytest

from tracked_ckpt.logged_code import MissingObject, code_modules, importable, missing_code_message
from tracked_ckpt.record import CheckpointRecord
from tracked_ckpt.tracker import LoggedCheckpoint

MODULE = """
import os


class Scale:
    pass


def double(x):
    return 2 * x
"""


@pytest.fixture
def code(tmp_path):
    """A folder of logged code: a module, a package whose __init__ imports a submodule, and junk."""
    folder = tmp_path / "code"
    (folder / "logpkg").mkdir(parents=True)
    (folder / "logmod.py").write_text(MODULE)
    (folder / "logpkg" / "__init__.py").write_text("from logpkg.layers import Shift\n")
    (folder / "logpkg" / "layers.py").write_text("class Shift:\n    pass\n")
    (folder / "notes.txt").write_text("")
    (folder / "no_package").mkdir()
    return str(folder)


def test_the_code_is_importable_in_the_block_only_and_a_module_of_the_same_name_comes_back(code):
    assert code_modules(code) == ["logmod", "logpkg"]
    users_own = types.ModuleType("logmod")
    sys.modules["logmod"] = users_own
    path_before = list(sys.path)
    try:
        with importable(code) as offered:
            assert sys.path[0] == code
            assert sys.modules["logmod"] is not users_own and "logpkg.layers" in sys.modules
            assert sorted(offered) == ["Scale", "Shift", "double"]  # what they define, not what they import
            assert offered["double"](2) == 4 and offered["Scale"].__module__ == "logmod"
        assert sys.path == path_before
        assert sys.modules["logmod"] is users_own
        assert not {"logpkg", "logpkg.layers"} & set(sys.modules)
        assert offered["double"](3) == 6  # the classes and functions outlive the block

        with pytest.raises(RuntimeError), importable(code):
            raise RuntimeError("the load failed")
        assert sys.path == path_before and sys.modules["logmod"] is users_own and "logpkg" not in sys.modules
    finally:
        sys.modules.pop("logmod", None)


def checkpoint() -> LoggedCheckpoint:
    record = CheckpointRecord.from_metadata({"epoch": 3, "step": 30, "sha256": ""}, name="net-e0003")
    return LoggedCheckpoint("m-1", "run-1", record, "wandb")


@pytest.mark.parametrize(
    "missing, carries_code, fix",
    [
        (MissingObject("class", "Shift", "logpkg.layers"), True, "code_paths=['logpkg'])."),
        (MissingObject("class", "Shift", "__main__"), True, "move it from the training script into a module"),
        (MissingObject("function", "Custom>double", None), True, "log the module that defines it"),
        (MissingObject("class", "Scale", "my_layers"), False, "code_paths=['my_layers.py']) on a tracker that logs"),
    ],
)
def test_the_message_names_the_class_its_module_and_both_fixes(missing, carries_code, fix):
    message = missing_code_message(checkpoint(), missing, carries_code=carries_code)
    short = missing.name.rpartition(">")[2]
    assert message.startswith(f"net-e0003 needs {missing.kind} {short!r}")
    assert f"custom_objects={{{short!r}: {short}}}" in message and fix in message and "\n" not in message
    if missing.module:
        assert f"of module {missing.module!r}" in message
