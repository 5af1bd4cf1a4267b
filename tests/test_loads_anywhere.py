"""The best checkpoint loads anywhere: custom objects, requirements read from the model, code paths.

Real Keras training on the embedded MLflow store; a package installed for the
test (a hand-built wheel, `pip install --target`); `mlflow.pyfunc.load_model` in
a fresh process, in another folder, where the model's local module is not
importable.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys

import keras
import mlflow
import numpy as np
import pytest
from support.helpers import child, install_layer_package, make_data

import tracked_ckpt
from tracked_ckpt import MissingRequirementError, TrackedModelCheckpoint
from tracked_ckpt.requirements import code_paths_arg, model_needs

X = np.random.default_rng(1).normal(size=(6, 4)).astype("float32")


class Doubling(keras.layers.Layer):
    """A custom layer that is *not* registered with Keras: it loads only with custom_objects."""

    def call(self, x):
        return x * 2.0


def fit(layer: keras.layers.Layer, epochs: int = 1, name: str = "custom", **callback_kwargs) -> tuple[keras.Model, str]:
    """Fit a tiny model ending in `layer` with a TrackedModelCheckpoint; return (model, run id)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), layer, keras.layers.Dense(1)], name=name)
    model.compile(optimizer="adam", loss="mse")
    x, y = make_data(16)
    with mlflow.start_run() as run:
        callback = TrackedModelCheckpoint(
            f"ckpt/{name}-{{epoch}}.keras", monitor="loss", log_git=False, **callback_kwargs
        )
        model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[callback])
    assert callback.last_report.ok
    return model, run.info.run_id


def model_file(checkpoint, name: str) -> str:
    """The text of one file of a checkpoint's MLflow model."""
    location = mlflow.MlflowClient().get_logged_model(checkpoint.id).artifact_location
    with open(mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/{name}")) as f:
        return f.read()


def test_unregistered_custom_layer_loads_with_custom_objects(embedded_store, workdir, caplog):
    with caplog.at_level(logging.WARNING, logger="tracked_ckpt"):
        model, run_id = fit(Doubling(), epochs=2)
    # The layer's module (this test file) is no installed package: one warning for the fit, naming the fix.
    warnings = [r.getMessage() for r in caplog.records if "code_paths" in r.getMessage()]
    assert len(warnings) == 1 and "test_loads_anywhere" in warnings[0], warnings
    assert "\n" not in warnings[0]

    tracked_ckpt.promote_best("custom-clf", run_id=run_id)
    # Keras cannot find the class on its own, and no code was logged: one line with both fixes.
    with pytest.raises(TypeError, match=r"needs class 'Doubling' of module '[\w.]*test_loads_anywhere'") as caught:
        tracked_ckpt.load_model("custom-clf")
    assert isinstance(caught.value, tracked_ckpt.MissingCodeError) and "\n" not in str(caught.value)
    assert "custom_objects={'Doubling': Doubling})" in str(caught.value) and "code_paths=[" in str(caught.value)
    restored = tracked_ckpt.load_model("custom-clf", custom_objects={"Doubling": Doubling}, compile=False)
    np.testing.assert_allclose(restored.predict(X, verbose=0), model.predict(X, verbose=0), rtol=1e-6)
    with pytest.raises(TypeError, match=r"custom_objects=\{'Scale': Scale\}"):
        tracked_ckpt.load_model("custom-clf", custom_objects=[Doubling])


def test_requirements_name_the_installed_package_and_a_missing_one_is_one_line(embedded_store, workdir, monkeypatch):
    site = install_layer_package(workdir / "pkg", name="tinylayers", version="0.1.0", cls="Triple")
    monkeypatch.syspath_prepend(site)
    import tinylayers

    model, run_id = fit(tinylayers.Triple(), epochs=2, name="pkg")
    checkpoints = tracked_ckpt.list_checkpoints(run_id=run_id)
    assert [c.record.requirements for c in checkpoints] == [("tinylayers==0.1.0",)] * 2
    requirements = model_file(checkpoints[-1], "requirements.txt").split()
    assert requirements == [
        f"mlflow=={mlflow.__version__}",
        f"keras=={keras.__version__}",
        f"tensorflow=={_version('tensorflow')}",
        "tinylayers==0.1.0",
    ]
    assert "    - tinylayers==0.1.0\n" in model_file(checkpoints[-1], "conda.yaml")
    assert "-r requirements.txt" in model_file(checkpoints[-1], "python_env.yaml")
    promoted = tracked_ckpt.promote_best("pkg-clf", run_id=run_id).checkpoint.record.name
    version = mlflow.MlflowClient().get_model_version_by_alias("pkg-clf", "champion")
    assert version.tags["tracked_ckpt.requirements"] == "tinylayers==0.1.0"
    restored = tracked_ckpt.load_model("pkg-clf")
    np.testing.assert_allclose(restored.predict(X, verbose=0), model.predict(X, verbose=0), rtol=1e-6)

    # The same checkpoint where the package is not installed: one line naming it and the fix.
    sys.path.remove(site)
    importlib.invalidate_caches()
    with pytest.raises(MissingRequirementError) as caught:
        tracked_ckpt.load_model("pkg-clf", cache_dir=workdir / "elsewhere")
    message = str(caught.value)
    assert message == (
        f"{promoted} needs the package 'tinylayers', which is not installed: pip install 'tinylayers==0.1.0'"
    )
    assert isinstance(caught.value, ImportError)
    assert not os.path.exists(workdir / "elsewhere")  # refused before downloading anything


LOCAL_MODULE = """
import keras


@keras.saving.register_keras_serializable()
class Halve(keras.layers.Layer):
    def call(self, x):
        return x * 0.5


class Shift(keras.layers.Layer):  # never registered: found by name through the model's code
    def call(self, x):
        return x + 1.0
"""


def test_local_module_passed_as_code_loads_with_pyfunc_in_a_fresh_process(embedded_store, workdir, monkeypatch, caplog):
    src = workdir / "src"
    src.mkdir()
    (src / "my_layers.py").write_text(LOCAL_MODULE)
    monkeypatch.syspath_prepend(str(src))
    import my_layers

    layer = keras.Sequential([my_layers.Halve(), my_layers.Shift()])
    with caplog.at_level(logging.WARNING, logger="tracked_ckpt"):
        model, run_id = fit(layer, name="local", code_paths=[os.path.join("src", "my_layers.py")])
    assert "code_paths" not in caplog.text  # the module travels: nothing to warn about
    (checkpoint,) = tracked_ckpt.list_checkpoints(run_id=run_id)
    assert checkpoint.record.requirements is None or checkpoint.record.requirements == ()
    mlmodel = model_file(checkpoint, "MLmodel")
    assert "code: code" in mlmodel and "_tracked_ckpt_loader" in mlmodel
    assert model_file(checkpoint, "code/my_layers.py") == LOCAL_MODULE

    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # JAX, not TensorFlow, in the fresh process: importing TensorFlow alone takes most of this
    # test's time, and a .keras file loads on either backend (tests/test_backends.py).
    env.update(MLFLOW_TRACKING_URI=embedded_store, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="jax")
    done = subprocess.run(
        child("pyfunc_predict", f"models:/{checkpoint.id}", json.dumps(X.tolist())),
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    predicted = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(predicted, model.predict(X, verbose=0), rtol=1e-5)


def test_load_model_uses_the_logged_code_in_a_fresh_process_and_leaves_its_imports_as_they_were(
    embedded_store, workdir, monkeypatch
):
    src = workdir / "src"
    src.mkdir()
    (src / "my_layers.py").write_text(LOCAL_MODULE)
    monkeypatch.syspath_prepend(str(src))
    import my_layers

    layer = keras.Sequential([my_layers.Halve(), my_layers.Shift()])
    with_code, run_id = fit(layer, name="local", code_paths=[os.path.join("src", "my_layers.py")])
    tracked_ckpt.promote_best("with-code", run_id=run_id)
    _, run_id = fit(keras.Sequential([my_layers.Halve(), my_layers.Shift()]), name="bare")
    promoted = tracked_ckpt.promote_best("without-code", run_id=run_id).checkpoint.record.name

    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    # This tracked_ckpt (a checkout's, not an installed one), and JAX (see above).
    package_root = os.path.dirname(os.path.dirname(tracked_ckpt.__file__))
    env = {**os.environ, "PYTHONPATH": package_root, "MLFLOW_TRACKING_URI": embedded_store}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="jax")
    done = subprocess.run(
        child("load_with_logged_code", "with-code", "without-code"),
        input=json.dumps(X.tolist()),
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded, refused = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert "error" not in loaded, loaded["error"]
    np.testing.assert_allclose(np.array(loaded["predictions"]), with_code.predict(X, verbose=0), rtol=1e-5)
    assert refused["error"] == (
        f"MissingCodeError: {promoted} needs class 'Shift' of module 'my_layers', which Keras cannot find and no "
        "code was logged with the checkpoint: pass load_model(..., custom_objects={'Shift': Shift}), or log the "
        "module with TrackedModelCheckpoint(..., code_paths=['my_layers.py'])."
    )
    for result in (loaded, refused):  # the logged code was importable for the call only
        assert result["sys_path_unchanged"] and result["modules_left"] == [], result
        assert result["importable_after"] is False, result

    # Here, where the user imported their own my_layers: the logged copy loads, theirs is back after.
    mine = sys.modules["my_layers"]
    path_before = list(sys.path)
    restored = tracked_ckpt.load_model("with-code", compile=False)
    assert sys.modules["my_layers"] is mine and sys.path == path_before
    shift = restored.layers[-2].layers[-1]
    assert type(shift).__module__ == "my_layers" and type(shift) is not mine.Shift  # the logged copy's, still working
    assert keras.saving.get_registered_object("Custom>Halve") is mine.Halve  # the user's registration holds
    np.testing.assert_allclose(restored.predict(X, verbose=0), with_code.predict(X, verbose=0), rtol=1e-5)
    with pytest.raises(tracked_ckpt.MissingCodeError, match=r"logged_code=False\): pass load_model\(") as caught:
        tracked_ckpt.load_model("with-code", logged_code=False)
    assert "\n" not in str(caught.value) and isinstance(caught.value, TypeError)
    assert tracked_ckpt.load_model("without-code", custom_objects={"Shift": my_layers.Shift}, compile=False)


def test_model_needs_reads_modules_and_registered_packages():
    config = json.dumps(
        {
            "module": "keras",
            "class_name": "Sequential",
            "config": {
                "layers": [
                    {"module": "keras.layers", "class_name": "Dense", "registered_name": None},
                    {"module": "numpy", "class_name": "X", "registered_name": "numpy>X"},
                    {"module": "my_local_thing.layers", "class_name": "Y", "registered_name": "Custom>Y"},
                    {"module": "__main__", "class_name": "Z", "registered_name": "Z"},
                    {"module": "json", "class_name": "W"},
                ]
            },
        }
    ).encode()
    scans = []

    def installed():  # what packages_distributions() would say, without reading every installed package
        scans.append(1)
        return {"numpy": ["numpy"]}

    needs = model_needs(config, distributions=installed)
    assert needs.requirements == (f"numpy=={_version('numpy')}",)  # keras, the stdlib and "Custom" are not packages
    assert needs.local_modules == ("__main__", "my_local_thing")
    assert len(scans) == 1  # numpy is found by its own name; only the unknown module needs the full map
    assert model_needs(config, covered={"my_local_thing"}, distributions=installed).local_modules == ("__main__",)


def test_code_paths_must_exist(workdir):
    (workdir / "layers.txt").write_text("")
    for bad in ("missing.py", "layers.txt"):
        with pytest.raises(ValueError, match=rf"code_paths entry '{bad}' .*: pass the module file") as caught:
            code_paths_arg([bad])
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="code_paths entry"):
        TrackedModelCheckpoint("ckpt/m.keras", code_paths=["missing.py"], tracker="mlflow")
    (workdir / "ok.py").write_text("")
    assert code_paths_arg("ok.py") == (str(workdir / "ok.py"),)


def _version(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)
