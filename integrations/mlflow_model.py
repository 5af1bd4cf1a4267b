"""What a checkpoint's MLflow LoggedModel holds: its tags and params, and its folder of files.

The schema rides as LoggedModel tags `tracked_ckpt.<key>` (and back: the record
of a LoggedModel's or a registered version's tags), a few schema keys also as
params (columns of MLflow's Models table), plus MLflow's own git tags.

The folder: a full-model `.keras` checkpoint becomes a keras-flavor MLflow model
built around the file Keras already wrote (no second serialisation): `data/`,
`MLmodel` (flavors, signature from the Keras input and output specs, the record
as metadata), `requirements.txt`, `python_env.yaml`, `conda.yaml`, and, with
`code_paths`, a `code/` folder with the loader of `mlflow_code_loader`. `.h5`
and `.weights.h5` checkpoints are carried under their Keras file name, beside
the record as JSON.

Pure functions of the record and local files: no calls to the MLflow store.
Imported through `tracked_ckpt.integrations.mlflow`, which checks the installed
MLflow before anything imports it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import logging
import os
import platform
import re
import shutil
from collections.abc import Mapping
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import Schema, TensorSpec

from tracked_ckpt.files import link_or_copy
from tracked_ckpt.integrations import mlflow_code_loader
from tracked_ckpt.record import TAG_PREFIX, CheckpointRecord

logger = logging.getLogger("tracked_ckpt")

GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_BRANCH_TAG = "mlflow.source.git.branch"
METADATA_FILE = "tracked_ckpt.json"
KERAS_DATA_DIR = "data"
# MLflow's UI shows none of a LoggedModel's tags, but its params both on the model page and as
# "Parameters" columns of the experiment's Models table: these schema keys are logged as params too.
MODEL_PARAMS = ("epoch", "step", "is_best", "monitor", "format", "size_bytes", "git_commit", "git_branch", "git_dirty")
#: The folder of a model's logged code.
CODE_DIR = mlflow_code_loader.CODE_DIR
#: The module, written into a model's code/ folder, that pyfunc imports to load a model with code paths.
CODE_LOADER = mlflow_code_loader.LOADER_MODULE

# The package that runs each Keras backend, for the requirements of a logged model.
_BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


# -- tags and params --------------------------------------------------------------------------


def checkpoint_tags(record: CheckpointRecord) -> dict[str, str]:
    """LoggedModel tags for a record: the schema under `tracked_ckpt.`, plus MLflow's git tags."""
    tags = {TAG_PREFIX + key: value for key, value in record.string_metadata().items()}
    if record.git_commit:
        # MLflow's own detection looks at the main script and misses pytest / `python -m`.
        tags[GIT_COMMIT_TAG] = record.git_commit
    if record.git_branch:
        tags[GIT_BRANCH_TAG] = record.git_branch
    return tags


def checkpoint_params(record: CheckpointRecord) -> dict[str, str]:
    """LoggedModel params for a record: the schema keys worth a column in MLflow's Models table."""
    metadata = record.string_metadata()
    return {key: metadata[key] for key in MODEL_PARAMS if key in metadata}


def schema_from_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    """The schema values in `tracked_ckpt.*` tags (a LoggedModel's or a registered version's)."""
    return {key[len(TAG_PREFIX) :]: value for key, value in (tags or {}).items() if key.startswith(TAG_PREFIX)}


# -- the model folder -------------------------------------------------------------------------


def build_model_folder(
    record: CheckpointRecord,
    path: str,
    out: str,
    *,
    model_id: str,
    run_id: str,
    artifact_uri: str,
    pip_requirements: list[str] | None = None,
) -> None:
    """Write into `out` the files of the LoggedModel `model_id` for the checkpoint file at `path`.

    `pip_requirements` (after `mlflow`) replace the default, `model_requirements(record)`.
    """
    # Every file is one more request (and server CPU) per checkpoint: only what loading needs.
    if record.format != "keras":
        with open(os.path.join(out, METADATA_FILE), "w") as f:
            json.dump(record.metadata(), f, indent=1, sort_keys=True)
        link_or_copy(path, os.path.join(out, os.path.basename(record.filepath)))
        return
    # The MLflow keras flavor's layout (mlflow.keras.save_model), around Keras's own file; its
    # keras_module.txt is never read back by Keras 3's loader, and the schema rides in MLmodel.
    data = os.path.join(out, KERAS_DATA_DIR)
    os.makedirs(data)
    link_or_copy(path, os.path.join(data, "model.keras"))
    mlmodel = Model(
        artifact_path=artifact_uri,
        run_id=run_id,
        model_id=model_id,
        model_uuid=model_id,
        metadata={"tracked_ckpt": record.metadata()},
    )
    mlmodel.add_flavor(
        "keras",
        data=KERAS_DATA_DIR,
        keras_version=record.keras_version,
        keras_backend=record.backend,
        save_exported_model=False,
    )
    code = _copy_code(record, out)
    mlflow.pyfunc.add_to_model(
        mlmodel,
        # With code, a loader in the model's code/ folder imports it first, then hands over to mlflow.keras.
        loader_module=CODE_LOADER if code else "mlflow.keras",
        code=CODE_DIR if code else None,
        conda_env="conda.yaml",
        python_env="python_env.yaml",
    )
    mlmodel.model_size_bytes = record.size_bytes
    mlmodel.signature = model_signature(record)
    if mlmodel.signature is None:
        logger.debug("%s is logged without a signature: its inputs and outputs cannot be described.", record.name)
    mlmodel.save(os.path.join(out, "MLmodel"))
    _write_environment(out, pip_requirements or model_requirements(record))


def model_signature(record: CheckpointRecord) -> ModelSignature | None:
    """The MLflow signature of a checkpoint, from the Keras model's input and output specs.

    A single input (or output) is unnamed, so `mlflow models serve` takes a plain
    tensor; several are named after the Keras inputs. The batch dimension is -1.
    None when the record has no specs or they do not map onto MLflow tensor specs.
    """
    specs = record.io_specs or {}
    if not specs.get("inputs") or not specs.get("outputs"):
        return None

    def schema(tensors: list[dict[str, Any]]) -> Schema:
        named = len(tensors) > 1
        return Schema(
            [
                TensorSpec(
                    np.dtype(t["dtype"]),
                    tuple(-1 if d is None else int(d) for d in t["shape"]),
                    t.get("name") if named else None,
                )
                for t in tensors
            ]
        )

    try:
        return ModelSignature(inputs=schema(specs["inputs"]), outputs=schema(specs["outputs"]))
    except (TypeError, ValueError, KeyError, MlflowException) as exc:
        logger.debug("No signature for %s: %s", record.name, exc)
        return None


def _default_requirements(backend: str = "tensorflow") -> list[str]:
    requirements = []
    for package in ("keras", _BACKEND_PACKAGES.get(backend, "tensorflow")):
        try:
            requirements.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return requirements


def model_requirements(record: CheckpointRecord) -> list[str]:
    """A keras-flavor model's pip requirements (besides mlflow): keras, the backend, then what its config needs.

    Example (a KerasHub model written on TensorFlow):
        >>> record = CheckpointRecord.from_metadata(
        ...     {"epoch": 3, "step": 30, "sha256": "", "backend": "tensorflow", "requirements": "keras-hub==0.21.1"},
        ...     name="bert-e0003",
        ... )
        >>> model_requirements(record)  # doctest: +ELLIPSIS
        ['keras==...', 'tensorflow==...', 'keras-hub==0.21.1']
    """
    merged: dict[str, str] = {}
    for requirement in [*_default_requirements(record.backend), *(record.requirements or ())]:
        name = re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0]
        merged.setdefault(re.sub(r"[-_.]+", "-", name).lower(), requirement)
    return list(merged.values())


def _copy_code(record: CheckpointRecord, out: str) -> bool:
    """Copy the record's code paths into the model's code/ folder, with the loader; False when there are none.

    A path gone since training started is left out with a warning (the checkpoint is still logged).
    """
    copied = False
    for source in record.code_paths or ():
        target = os.path.join(out, CODE_DIR, os.path.basename(os.path.normpath(source)))
        try:
            if os.path.isdir(source):
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
        except OSError as exc:
            logger.warning("%s is logged without its code path %s: %s", record.name, source, exc)
            continue
        copied = True
    if copied:
        with open(os.path.join(out, CODE_DIR, CODE_LOADER + ".py"), "w") as f:
            f.write(inspect.getsource(mlflow_code_loader))
    return copied


def _write_environment(out: str, requirements: list[str]) -> None:
    python = platform.python_version()
    with open(os.path.join(out, "requirements.txt"), "w") as f:
        f.write("\n".join([f"mlflow=={mlflow.__version__}", *requirements]) + "\n")
    with open(os.path.join(out, "python_env.yaml"), "w") as f:
        f.write(
            f"python: {python}\nbuild_dependencies:\n- pip\n- setuptools\n- wheel\n"
            "dependencies:\n- -r requirements.txt\n"
        )
    deps = "".join(f"    - {r}\n" for r in [f"mlflow=={mlflow.__version__}", *requirements])
    with open(os.path.join(out, "conda.yaml"), "w") as f:
        f.write(f"channels:\n- conda-forge\ndependencies:\n- python={python}\n- pip\n- pip:\n{deps}name: mlflow-env\n")
