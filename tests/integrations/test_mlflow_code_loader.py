"""The code loader (`mlflow_code_loader`) on its own: the file a model logged with `code_paths` carries.

A real fit logs a model with a local module whose layer Keras cannot find by
itself; the model folder is downloaded from the embedded store, the module is
made unimportable, and the model is loaded by the loader module directly and by
`mlflow.pyfunc.load_model` (which imports the loader's copy in the model's code/
folder), as MLflow does in a process that never saw the module.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys

import keras
import mlflow
import numpy as np
import pytest
from support.helpers import make_data

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.integrations import mlflow_code_loader
from tracked_ckpt.integrations.mlflow import CODE_DIR, CODE_LOADER

MODULE = "code_loader_layers"  # a name no other test imports: this one's class must come from the model
LAYERS = """
import keras


class Triple(keras.layers.Layer):  # never registered: Keras finds it only through the loader
    def call(self, x):
        return x * 3.0
"""
X = np.random.default_rng(2).normal(size=(5, 4)).astype("float32")


@pytest.fixture
def unimported():
    """Forget the test's module, the loader's copy and the model's code/ folder on sys.path afterwards."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in (MODULE, CODE_LOADER):
        sys.modules.pop(name, None)


def logged_model_folder(workdir, monkeypatch) -> tuple[keras.Model, str]:
    """Fit with `code_paths=[<MODULE>.py]`; return the model and its downloaded MLflow model folder.

    The module is then neither on sys.path nor imported: only the model's code/ folder has it.
    """
    src = workdir / "src"
    src.mkdir()
    (src / f"{MODULE}.py").write_text(LAYERS)
    monkeypatch.syspath_prepend(str(src))
    layers = __import__(MODULE)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2), layers.Triple(), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x, y = make_data(16)
    with mlflow.start_run() as run:
        callback = TrackedModelCheckpoint(
            "ckpt/m-{epoch}.keras", log_git=False, code_paths=[os.path.join("src", f"{MODULE}.py")]
        )
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[callback])
    assert callback.last_report.ok
    (checkpoint,) = tracked_ckpt.list_checkpoints(run_id=run.info.run_id)
    location = mlflow.MlflowClient().get_logged_model(checkpoint.id).artifact_location
    folder = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(workdir / "downloaded"))
    sys.path.remove(str(src))
    del sys.modules[MODULE]
    return model, folder


def test_the_model_carries_the_loader_module_as_it_is_and_names_it(embedded_store, workdir, monkeypatch, unimported):
    _, folder = logged_model_folder(workdir, monkeypatch)
    with open(os.path.join(folder, CODE_DIR, CODE_LOADER + ".py")) as f:
        assert f.read() == inspect.getsource(mlflow_code_loader)
    pyfunc = mlflow.models.Model.load(os.path.join(folder, "MLmodel")).flavors["python_function"]
    assert pyfunc["loader_module"] == CODE_LOADER == "_tracked_ckpt_loader"
    assert pyfunc["code"] == CODE_DIR
    assert sorted(os.listdir(os.path.join(folder, CODE_DIR))) == [f"{CODE_LOADER}.py", f"{MODULE}.py"]


def test_the_loader_loads_the_model_with_its_code_where_keras_alone_cannot(
    embedded_store, workdir, monkeypatch, unimported
):
    model, folder = logged_model_folder(workdir, monkeypatch)
    with pytest.raises(TypeError, match="Triple"):
        mlflow.keras.load_model(folder)  # the keras flavor alone: the class is nowhere to be found

    loaded = mlflow_code_loader._load_pyfunc(folder)  # what MLflow calls, with the model's folder

    triple = loaded.get_raw_model().layers[1]
    assert type(triple).__name__ == "Triple"
    assert os.path.samefile(sys.modules[MODULE].__file__, os.path.join(folder, CODE_DIR, f"{MODULE}.py"))
    np.testing.assert_allclose(loaded.predict(X), model.predict(X, verbose=0), rtol=1e-5)


def test_pyfunc_loads_the_model_through_the_copy_in_its_code_folder(embedded_store, workdir, monkeypatch, unimported):
    model, folder = logged_model_folder(workdir, monkeypatch)
    loaded = mlflow.pyfunc.load_model(folder)

    assert os.path.samefile(sys.modules[CODE_LOADER].__file__, os.path.join(folder, CODE_DIR, f"{CODE_LOADER}.py"))
    assert os.path.samefile(sys.modules[MODULE].__file__, os.path.join(folder, CODE_DIR, f"{MODULE}.py"))
    np.testing.assert_allclose(loaded.predict(X), model.predict(X, verbose=0), rtol=1e-5)


def test_code_modules_are_the_folders_modules_and_packages_without_the_loader(tmp_path):
    for name in ("b_module.py", "a_module.py", f"{CODE_LOADER}.py", ".hidden.py", "notes.txt"):
        (tmp_path / name).write_text("")
    (tmp_path / "package").mkdir()
    (tmp_path / "package" / "__init__.py").write_text("")
    (tmp_path / "data").mkdir()  # no __init__.py: not a package
    assert list(mlflow_code_loader._code_modules(str(tmp_path))) == ["a_module", "b_module", "package"]


def test_the_loader_imports_nothing_of_tracked_ckpt():
    """It runs where the model is loaded, where tracked-ckpt need not be installed."""
    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(mlflow_code_loader))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"__future__", "importlib", "os", "sys", "collections", "typing", "keras", "mlflow"}
