"""What a `.keras` checkpoint needs to load elsewhere, read from the config Keras wrote.

A `.keras` file is a zip archive whose `config.json` names the module of every
serialised class and function (`"module": "keras_hub.src.models..."`) and the
package of every registered one (`"registered_name": "keras_hub>BertBackbone"`).
From those names alone (no import of the model's code, no inference run) this
module finds the installed distributions that provide them, pinned to their
installed versions (`keras-hub==0.21.1`), and the modules no distribution
provides (a `my_layers.py` beside the training script), which only load
elsewhere when their source travels with the checkpoint (`code_paths`).

It runs on the publisher's side, never on the training thread, once per
distinct config per fit (`RequirementsResolver`). The registry helper uses
`check_requirements` before loading, so a missing package is one line naming
the `pip install` that fixes it.

Example (a config naming a class of `tqdm`, which is installed):
    >>> needs = model_needs(b'{"module": "tqdm.auto", "class_name": "Scale"}')
    >>> needs.requirements  # doctest: +ELLIPSIS
    ('tqdm==...',)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import sys
import threading
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tracked_ckpt.errors import MissingRequirementError as MissingRequirementError

logger = logging.getLogger("tracked_ckpt")

#: Import names that never need a requirement of their own: Keras (always required) and Python's own.
_ALWAYS_THERE = {"keras", "builtins", "__main__"}


@dataclasses.dataclass(frozen=True)
class ModelNeeds:
    """What a saved Keras config references beyond Keras itself.

    Attributes:
        requirements: pinned installed distributions (`name==version`), sorted by name.
        local_modules: top-level modules no installed distribution provides (and no
            code path carries), sorted; `__main__` when a class was defined in the script.
    """

    requirements: tuple[str, ...] = ()
    local_modules: tuple[str, ...] = ()


def keras_config_bytes(path: str | os.PathLike[str]) -> bytes | None:
    """The raw `config.json` of a `.keras` archive, or None when the file is not one.

    Example (on a `.keras` archive written by `model.save`, the config's first bytes are `b'{"module":'`):
        >>> keras_config_bytes("ckpt/no-such-file.keras") is None
        True
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        logger.debug("No Keras config in %s: %s", path, exc)
        return None


def referenced_names(config: Any) -> tuple[set[str], set[str]]:
    """(modules, registered packages) named anywhere in a parsed Keras config.

    Modules come from `"module"` values of serialised objects; registered
    packages are the part before `>` of `"registered_name"` values (the
    `package=` of `keras.saving.register_keras_serializable`, which need not be
    a module name: its default is `Custom`).

    Example:
        >>> referenced_names({"module": "my_layers", "class_name": "Scale", "registered_name": "my_layers>Scale"})
        ({'my_layers'}, {'my_layers'})
    """
    modules: set[str] = set()
    packages: set[str] = set()
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            module, registered = item.get("module"), item.get("registered_name")
            if isinstance(module, str) and module and "class_name" in item:
                modules.add(module)
            if isinstance(registered, str) and ">" in registered:
                packages.add(registered.split(">", 1)[0])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return modules, packages


def code_paths_arg(
    code_paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None,
) -> tuple[str, ...] | None:
    """Check `TrackedModelCheckpoint(code_paths=...)`: existing module files or package folders, made absolute.

    Raises:
        ValueError: an entry does not exist, or is neither a `.py` file nor a folder.

    Example:
        >>> import tracked_ckpt
        >>> folder = os.path.dirname(tracked_ckpt.__file__)
        >>> code_paths_arg([folder]) == (folder,), code_paths_arg(None)
        (True, None)
    """
    if code_paths is None:
        return None
    if isinstance(code_paths, (str, os.PathLike)):
        code_paths = [code_paths]
    checked = []
    for entry in code_paths:
        path = os.path.abspath(os.fspath(entry))
        if os.path.isdir(path) or (os.path.isfile(path) and path.endswith(".py")):
            checked.append(path)
            continue
        what = "does not exist" if not os.path.exists(path) else "is not a .py file or a folder"
        raise ValueError(
            f"code_paths entry {os.fspath(entry)!r} {what}: pass the module file (e.g. 'my_layers.py') "
            "or package folder that defines the model's custom layers, relative to the working directory or absolute."
        )
    return tuple(checked)


def code_modules(code_paths: Iterable[str] | None) -> set[str]:
    """The top-level import names that code paths provide (`my_layers.py` -> `my_layers`, `pkg/` -> `pkg`)."""
    names = set()
    for path in code_paths or ():
        base = os.path.basename(os.path.normpath(path))
        names.add(base[:-3] if base.endswith(".py") else base)
    return names


def model_needs(
    config: bytes, covered: Iterable[str] = (), distributions: Callable[[], Mapping[str, list[str]]] | None = None
) -> ModelNeeds:
    """The distributions and local modules a saved Keras config references.

    Args:
        config: the bytes of the archive's `config.json`.
        covered: top-level modules whose source travels with the checkpoint
            (`code_modules(code_paths)`): neither required nor reported as local.
        distributions: returns `importlib.metadata.packages_distributions()`; called
            only for a module no distribution of the same name provides (reading
            every installed distribution takes about a second in a large environment).

    Returns:
        A `ModelNeeds`; Keras itself and the standard library are left out.
    """
    modules, packages = referenced_names(json.loads(config))
    lookup = functools.cache(distributions or importlib.metadata.packages_distributions)  # read at most once
    covered = set(covered)
    wanted: dict[str, str] = {}
    local: set[str] = set()
    for module, authoritative in [*((m, True) for m in sorted(modules)), *((p, False) for p in sorted(packages))]:
        top = module.split(".", 1)[0]
        if top == "__main__":
            if authoritative:
                local.add(top)
            continue
        if top in _ALWAYS_THERE or top in sys.stdlib_module_names or top in covered or not top.isidentifier():
            continue
        found = _distributions_of(module, lookup)
        for dist in found:
            if _canonical(dist) == "keras":
                continue
            try:
                wanted.setdefault(_canonical(dist), f"{dist}=={importlib.metadata.version(dist)}")
            except importlib.metadata.PackageNotFoundError:
                continue
        if authoritative and not found:
            local.add(top)
    return ModelNeeds(tuple(wanted[k] for k in sorted(wanted)), tuple(sorted(local)))


class RequirementsResolver:
    """The requirements of each `.keras` checkpoint of one fit, parsed once per distinct config.

    Keras writes the same config every epoch, so the archive's `config.json` is
    read each time (cheap: one zip member) but parsed and matched against the
    installed distributions only when its bytes change. Modules no distribution
    provides are reported in one warning per fit, naming the fix.

    Example (a file without a Keras config needs nothing; a KerasHub model gives `('keras-hub==0.21.1',)`):
        >>> RequirementsResolver().requirements("spool/abc.weights.h5", code_paths=None)
        ()
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, tuple[str, ...]], ModelNeeds] = {}
        self._distributions: Mapping[str, list[str]] | None = None  # read at most once per fit, if needed
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def requirements(self, path: str, code_paths: Sequence[str] | None = None, name: str = "") -> tuple[str, ...]:
        """The pinned distributions the checkpoint at `path` needs; () when it has no Keras config.

        Never raises: a config that cannot be read or parsed gives () and a debug line.
        """
        config = keras_config_bytes(path)
        if config is None:
            return ()
        covered = tuple(sorted(code_modules(code_paths)))
        key = (hashlib.sha256(config).hexdigest(), covered)
        with self._lock:
            needs = self._cache.get(key)
            if needs is None:
                try:
                    needs = model_needs(config, covered, self._installed)
                except (ValueError, TypeError) as exc:  # not JSON, or not a Keras config
                    logger.debug("Could not read the requirements of %s: %s", name or path, exc)
                    needs = ModelNeeds()
                self._cache[key] = needs
            new_local = [m for m in needs.local_modules if m not in self._warned]
            self._warned.update(new_local)
        if new_local:
            _warn_local(new_local, name)
        return needs.requirements

    def _installed(self) -> Mapping[str, list[str]]:
        if self._distributions is None:
            self._distributions = importlib.metadata.packages_distributions()
        return self._distributions


def _warn_local(modules: list[str], name: str) -> None:
    main = "__main__" in modules
    others = [m for m in modules if m != "__main__"]
    parts = []
    if others:
        listed = ", ".join(repr(m) for m in others)
        files = ", ".join(repr(f"{m}.py") for m in others)
        parts.append(
            f"its config references {listed}, which no installed package provides, so it will not load on "
            f"another machine: make it an installed package, or pass its source to the callback, "
            f"TrackedModelCheckpoint(..., code_paths=[{files}]), to log it with each checkpoint"
        )
    if main:
        parts.append(
            "it uses a class or function defined in the training script (__main__), which no other process "
            "can import: move it into a module and pass that file as code_paths=[...]"
        )
    logger.warning("Checkpoint %s: %s.", name or "model", "; and ".join(parts))


def parse_requirement(requirement: str) -> tuple[str, str | None]:
    """(distribution name, pinned version or None) of a recorded `name==version` requirement.

    Example:
        >>> parse_requirement("keras-hub==0.21.1")
        ('keras-hub', '0.21.1')
    """
    name, sep, version = requirement.partition("==")
    return name.strip(), (version.strip() or None) if sep else None


def check_requirements(requirements: Iterable[str] | None, checkpoint: str = "checkpoint") -> None:
    """Refuse, in one line, to load a checkpoint whose recorded packages are not installed.

    A package installed at another version than recorded is a warning, not an error.

    Raises:
        MissingRequirementError: names the missing packages and the `pip install` that fixes it.

    Example:
        >>> check_requirements(["packaging"], "digits-e0003")  # installed: nothing to say
        >>> check_requirements(["keras-hub==0.21.1"], "bert-e0003")
        Traceback (most recent call last):
          ...
        tracked_ckpt.requirements.MissingRequirementError: bert-e0003 needs the package 'keras-hub', which is not \
installed: pip install 'keras-hub==0.21.1'
    """
    missing, other = [], []
    for requirement in requirements or ():
        name, pinned = parse_requirement(requirement)
        if not name:
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append((name, requirement))
            continue
        if pinned is not None and installed != pinned:
            other.append(f"{name} {installed} (saved with {pinned})")
    if other:
        logger.warning(
            "%s was saved with other package versions than installed here: %s.", checkpoint, ", ".join(other)
        )
    if missing:
        names = ", ".join(repr(name) for name, _ in missing)
        noun = "the package" if len(missing) == 1 else "the packages"
        command = " ".join(f"'{requirement}'" for _, requirement in missing)
        raise MissingRequirementError(
            f"{checkpoint} needs {noun} {names}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install {command}"
        )


def _distributions_of(module: str, lookup: Callable[[], Mapping[str, list[str]]]) -> list[str]:
    """The installed distributions providing `module`: the one named like its top-level package
    (the common case, one look-up), else those the installed files map it to (namespace packages
    narrowed to the ones shipping `module`'s subpackage)."""
    top = module.split(".", 1)[0]
    named = _named_distribution(top)
    if named is not None and _ships(named, (top,)):
        return [named]
    found = list(dict.fromkeys(lookup().get(top, ())))
    if len(found) > 1 and "." in module:
        found = [d for d in found if _ships(d, tuple(module.split(".")[:2]))] or found
    if not found and named is not None:
        return [named]  # an editable install, whose files are a .pth hook, not the package
    return found


def _named_distribution(name: str) -> str | None:
    try:
        return importlib.metadata.metadata(name)["Name"] or name
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=256)
def _ships(dist: str, parts: tuple[str, ...]) -> bool:
    """Whether distribution `dist` installed files under the package path `parts` (or `parts[-1].py`);
    True when it lists no files."""
    try:
        files = importlib.metadata.distribution(dist).files
    except importlib.metadata.PackageNotFoundError:
        return False
    if files is None:
        return True
    n = len(parts)
    module_file = (*parts[:-1], parts[-1] + ".py")
    return any(f.parts[:n] == parts or f.parts[:n] == module_file for f in files)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
