"""Written by tracked-ckpt: load this MLflow model together with the code logged beside it.

This file is copied as it is into the `code/` folder of every keras-flavor model
logged with `code_paths`, as `_tracked_ckpt_loader.py`, the model's pyfunc
`loader_module`. `mlflow.pyfunc.load_model` (and `mlflow models serve`) put that
folder on sys.path and call `_load_pyfunc`. It imports every module and package of
the folder, so that their Keras classes are registered, offers their classes and
functions to Keras by name (for classes that were never registered), and hands over
to MLflow's keras flavor.

It runs wherever the model is loaded, where tracked-ckpt need not be installed: it
imports only the standard library, Keras and MLflow.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from typing import Any

#: The model's folder of logged code (the MLmodel's pyfunc `code`).
CODE_DIR = "code"
#: The name of this module's copy in that folder (the MLmodel's pyfunc `loader_module`).
LOADER_MODULE = "_tracked_ckpt_loader"


def _code_modules(code_dir: str) -> Iterator[str]:
    """The names of the modules and packages in `code_dir`, this loader's copy left out."""
    for entry in sorted(os.listdir(code_dir)):
        if entry == LOADER_MODULE + ".py" or entry.startswith("."):
            continue
        if entry.endswith(".py"):
            yield entry[:-3]
        elif os.path.isfile(os.path.join(code_dir, entry, "__init__.py")):
            yield entry


def _load_pyfunc(path: str, model_config: Any = None) -> Any:
    """The pyfunc model at `path` (the model's folder, or a file in it), its logged code imported first."""
    import keras
    from mlflow import keras as mlflow_keras

    root = path if os.path.isfile(os.path.join(path, "MLmodel")) else os.path.dirname(path)
    code_dir = os.path.join(root, CODE_DIR)
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    objects: dict[str, Any] = {}
    for name in _code_modules(code_dir):
        module = importlib.import_module(name)
        objects.update(
            {
                key: value
                for key, value in vars(module).items()
                if callable(value) and getattr(value, "__module__", None) == module.__name__
            }
        )
    with keras.saving.custom_object_scope(objects):
        return mlflow_keras._load_pyfunc(path)
