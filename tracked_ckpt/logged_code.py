"""Loading a `.keras` checkpoint with the code logged beside it (`code_paths`), or one line saying what is missing.

A `.keras` file names each class of the model by module and class name. Keras
finds the classes that are registered or passed as `custom_objects`, and imports
no module but its own; a class from the user's `my_layers.py` loads elsewhere
only with that module. `TrackedModelCheckpoint(code_paths=[...])` logs its source
with each checkpoint (MLflow: the model's `code/` folder), and `load_keras_file`
uses it when, and only when, Keras cannot find a class otherwise:

1. load as Keras would (installed and imported modules, registered classes,
   `custom_objects`): no request beyond the file's download;
2. on Keras's "Could not locate class" failure, fetch the logged code
   (`TrackerRegistry.fetch_code`, kept in the download cache) and load again with
   it importable: its modules imported, so that their registrations run, and
   their classes and functions offered by name (the caller's `custom_objects` win);
3. no code logged, or it lacks the class: a `MissingCodeError` in one line naming
   the class, its module and both fixes.

The logged code is importable for the call only. Afterwards `sys.path` is as it
was, and the modules imported from the code are gone from `sys.modules` (with any
module of the same name imported before put back): the returned model keeps its
classes (they hold their modules' globals) and Keras keeps their registrations
(a name registered before keeps the class it had), so the model predicts, trains,
saves and clones as usual, while a later `import my_layers` resolves through the
user's own `sys.path` as it always did, never silently from the download cache.
Only logged code that imports more of itself after the load (`import
my_layers.ops` inside `call`) would miss it.

Importing logged code runs it, as `mlflow.pyfunc.load_model` does: load from a
store you trust, or pass `load_model(..., logged_code=False)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

from tracked_ckpt.cache import cache_root
from tracked_ckpt.errors import MissingCodeError as MissingCodeError  # raised here; importable from here too
from tracked_ckpt.files import safe_file_name
from tracked_ckpt.tracker import LoggedCheckpoint, TrackerRegistry

logger = logging.getLogger("tracked_ckpt")

# What Keras says of a class or function it cannot find, and the module in the config it prints after.
_MISSING_RE = re.compile(r"Could not locate (class|function) '([^']+)'")
_MODULE_RE = re.compile(r"'module': '([^']*)'")


@dataclasses.dataclass(frozen=True)
class MissingObject:
    """A class or function a checkpoint's config names that Keras could not find.

    Attributes:
        kind: "class" or "function".
        name: its name in the config (a registered function's may be `package>name`).
        module: the module the config says defines it, if it says.
    """

    kind: str
    name: str
    module: str | None

    @property
    def short_name(self) -> str:
        """The name without a registration package: the key for `custom_objects`."""
        return self.name.rpartition(">")[2]


def missing_object(exc: BaseException) -> MissingObject | None:
    """The class or function Keras could not find, read from the error it raised; None for any other error.

    Example:
        >>> missing_object(TypeError(
        ...     "<class 'Sequential'> could not be deserialized properly. ... config={'module': 'keras', ...}. "
        ...     "Exception encountered: Could not locate class 'Shift'. Make sure custom classes ... "
        ...     "Full object config: {'module': 'my_layers', 'class_name': 'Shift', 'config': {}}"
        ... ))
        MissingObject(kind='class', name='Shift', module='my_layers')
        >>> missing_object(TypeError("unsupported operand")) is None
        True
    """
    text = str(exc)
    found = _MISSING_RE.search(text)
    if found is None:
        return None
    module = _MODULE_RE.search(text, found.end())
    named = module.group(1) if module and module.group(1) not in ("", "builtins") else None  # builtins: says nothing
    return MissingObject(found.group(1), found.group(2), named)


def load_keras_file(
    path: str,
    checkpoint: LoggedCheckpoint,
    registry: TrackerRegistry,
    *,
    custom_objects: Mapping[str, Any] | None,
    compile: bool,
    safe_mode: bool,
    cache_dir: str | os.PathLike[str] | None = None,
    logged_code: bool = True,
) -> Any:
    """Load the checkpoint file at `path` with `keras.saving.load_model`, with its logged code if it needs it.

    Raises:
        MissingCodeError: the config names a class or function that neither Keras,
            `custom_objects` nor the logged code defines (one line naming both fixes).
    """
    import keras

    given = dict(custom_objects or {})

    def load(objects: Mapping[str, Any]) -> Any:
        return keras.saving.load_model(path, custom_objects=dict(objects) or None, compile=compile, safe_mode=safe_mode)

    try:
        return load(given)
    except TypeError as exc:
        missing = missing_object(exc)
        if missing is None:
            raise
        logger.debug("Keras cannot find %s %s: %s", missing.kind, missing.name, exc)
    code = fetch_code(registry, checkpoint, cache_dir) if logged_code else None
    if code is None:
        raise MissingCodeError(
            missing_code_message(checkpoint, missing, carries_code=_carries_code(registry), logged_code=logged_code)
        ) from None
    registered = keras.saving.get_custom_objects()  # Keras's live registry (public API)
    registered_before = dict(registered)
    with importable(code) as offered:
        try:
            return load({**offered, **given})
        except TypeError as exc:
            missing = missing_object(exc)
            if missing is None:
                raise
            logger.debug("Keras cannot find %s %s with the logged code: %s", missing.kind, missing.name, exc)
        finally:
            registered.update(registered_before)  # a name registered before keeps the user's class
    raise MissingCodeError(
        f"{_needs(checkpoint, missing)}, which neither Keras nor the code logged with the checkpoint "
        f"({', '.join(code_modules(code))}) defines: pass {_custom_objects_fix(missing)}, "
        "or log the module that defines it with code_paths=[...]."
    ) from None


def fetch_code(
    registry: TrackerRegistry, checkpoint: LoggedCheckpoint, cache_dir: str | os.PathLike[str] | None
) -> str | None:
    """The folder of the code logged with `checkpoint`, from the download cache or the tracker; None if none was.

    Kept under `<cache>/code/<checkpoint id>/`: a logged model's files never change,
    so a warm call asks nothing. Moved there whole once downloaded, so a folder
    that is there is complete.
    """
    parent = os.path.join(cache_root(cache_dir), "code")
    target = os.path.join(parent, safe_file_name(checkpoint.id.replace("/", "_").replace(":", "_")))
    if os.path.isdir(target):
        return target
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".download-") as tmp:
        fetched = registry.fetch_code(checkpoint, tmp)
        if fetched is None:
            return None
        try:
            os.rename(fetched, target)
        except OSError:
            if not os.path.isdir(target):  # else another process cached it first: use theirs
                raise
    return target


def code_modules(folder: str) -> list[str]:
    """The top-level modules and packages of a folder of logged code, by import name.

    The same rule as `mlflow_code_loader._code_modules`, which cannot import this
    package (it runs where tracked-ckpt may not be installed).
    """
    names = []
    for entry in sorted(os.listdir(folder)):
        if entry.startswith("."):
            continue
        if entry.endswith(".py"):
            names.append(entry[:-3])
        elif os.path.isfile(os.path.join(folder, entry, "__init__.py")):
            names.append(entry)
    return names


@contextlib.contextmanager
def importable(folder: str) -> Iterator[dict[str, Any]]:
    """Import the modules of `folder` for the duration of the block; yield their classes and functions by name.

    On exit, `sys.path` and `sys.modules` are as they were: the folder and the
    modules imported from it are gone, and any module of the same name imported
    before is back (it was set aside, so that the logged copy is the one imported).
    """
    names = code_modules(folder)

    def ours(module_name: str) -> bool:
        return module_name.partition(".")[0] in names

    set_aside = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in set_aside:
        del sys.modules[name]
    sys.path.insert(0, folder)
    importlib.invalidate_caches()
    try:
        for name in names:
            importlib.import_module(name)
        offered: dict[str, Any] = {}
        for name, module in list(sys.modules.items()):  # a package's submodules too
            if ours(name) and module is not None:
                offered.update(_defined_in(name, vars(module)))
        yield offered
    finally:
        if sys.path and sys.path[0] == folder:
            del sys.path[0]
        elif folder in sys.path:
            sys.path.remove(folder)
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(set_aside)


def missing_code_message(
    checkpoint: LoggedCheckpoint, missing: MissingObject, *, carries_code: bool = True, logged_code: bool = True
) -> str:
    """The one line for a class or function Keras cannot find and no logged code provides: both fixes.

    Example:
        >>> from tracked_ckpt.record import CheckpointRecord
        >>> record = CheckpointRecord.from_metadata({"epoch": 7, "step": 1, "sha256": ""}, name="net-e0007")
        >>> checkpoint = LoggedCheckpoint("m-1", "run-1", record, "mlflow")
        >>> print(missing_code_message(checkpoint, MissingObject("class", "Scale", "my_layers")))
        net-e0007 needs class 'Scale' of module 'my_layers', which Keras cannot find and no code was logged with \
the checkpoint: pass load_model(..., custom_objects={'Scale': Scale}), or log the module with \
TrackedModelCheckpoint(..., code_paths=['my_layers.py']).
    """
    top = (missing.module or "").partition(".")[0]
    if not logged_code:
        cause = "which Keras cannot find (the logged code was not used: logged_code=False)"
    else:
        cause = "which Keras cannot find and no code was logged with the checkpoint"
    if not top:
        log = "log the module that defines it with TrackedModelCheckpoint(..., code_paths=[...])"
    elif top == "__main__":
        log = (
            "move it from the training script into a module and log that with "
            "TrackedModelCheckpoint(..., code_paths=['my_layers.py'])"
        )
    else:
        source = f"{top}.py" if "." not in (missing.module or "") else top  # a package: its folder
        log = f"log the module with TrackedModelCheckpoint(..., code_paths=[{source!r}])"
    if not carries_code:
        log += " on a tracker that logs code (mlflow)"
    return f"{_needs(checkpoint, missing)}, {cause}: pass {_custom_objects_fix(missing)}, or {log}."


def _needs(checkpoint: LoggedCheckpoint, missing: MissingObject) -> str:
    module = f" of module {missing.module!r}" if missing.module else ""
    return f"{checkpoint.record.name or 'The checkpoint'} needs {missing.kind} {missing.short_name!r}{module}"


def _custom_objects_fix(missing: MissingObject) -> str:
    return f"load_model(..., custom_objects={{{missing.short_name!r}: {missing.short_name}}})"


def _carries_code(registry: TrackerRegistry) -> bool:
    """Whether a registry logs code with its checkpoints (it overrides the default `fetch_code`)."""
    return type(registry).fetch_code is not TrackerRegistry.fetch_code


def _defined_in(module_name: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The classes and functions a module defines (not those it imports), by name."""
    return {
        key: value
        for key, value in namespace.items()
        if callable(value) and getattr(value, "__module__", None) == module_name
    }
