"""MLflow model signatures from the Keras model's specs: read back by MLflow, enforced by `mlflow models serve`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import keras
import mlflow
import numpy as np
import pytest
from support.helpers import make_data, make_model
from support.mlflow_runs import logged_models
from support.mlflow_server import free_port

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint


def fit_one(model, x, y, path="ckpt/{epoch}.keras", epochs=1):
    with mlflow.start_run() as run:
        model.fit(
            x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[TrackedModelCheckpoint(path, monitor="loss")]
        )
    return logged_models(run.info.run_id)


def test_a_logged_checkpoint_carries_the_keras_signature(embedded_store, workdir):
    x, y = make_data()
    (model,) = fit_one(make_model("sig"), x, y)
    info = mlflow.models.get_model_info(f"models:/{model.model_id}")
    assert info.signature is not None
    signature = info.signature.to_dict()
    inputs, outputs = json.loads(signature["inputs"]), json.loads(signature["outputs"])
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]
    assert outputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1]}}]
    # The registered version points at the same MLmodel, so the registry page shows the schema too.
    result = tracked_ckpt.promote_best("sig-model")
    version = mlflow.MlflowClient().get_model_version("sig-model", result.version)
    assert mlflow.models.get_model_info(version.source).signature == info.signature


def test_several_inputs_are_named_after_the_keras_inputs(embedded_store, workdir):
    a, b = keras.Input((3,), name="features"), keras.Input((2,), name="mask", dtype="int32")
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([a, keras.ops.cast(b, "float32")]))
    model = keras.Model({"features": a, "mask": b}, out, name="two")
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = {"features": rng.normal(size=(16, 3)).astype("float32"), "mask": rng.integers(0, 2, (16, 2)).astype("int32")}
    (logged,) = fit_one(model, x, rng.normal(size=(16, 1)).astype("float32"))
    signature = mlflow.models.get_model_info(f"models:/{logged.model_id}").signature
    specs = {spec.name: (spec.type, spec.shape) for spec in signature.inputs.inputs}
    assert specs == {"features": (np.dtype("float32"), (-1, 3)), "mask": (np.dtype("int32"), (-1, 2))}


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1)

    def call(self, inputs):
        return self.dense(inputs)


def test_a_model_without_describable_inputs_logs_without_a_signature(embedded_store, workdir, caplog):
    model = Subclassed(name="sub")
    model.compile(optimizer="sgd", loss="mse")
    x, y = make_data()
    with caplog.at_level(logging.DEBUG, logger="tracked_ckpt"):
        (logged,) = fit_one(model, x, y, path="ckpt/sub-{epoch}.keras")
    assert str(logged.status) == "READY"
    assert mlflow.models.get_model_info(f"models:/{logged.model_id}").signature is None
    assert any("without a signature" in r.getMessage() for r in caplog.records), caplog.text


def post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
def test_mlflow_models_serve_refuses_a_request_of_the_wrong_shape(embedded_store, workdir):
    x, y = make_data()
    (model,) = fit_one(make_model("served"), x, y)
    port = free_port()
    bin_dir = os.path.dirname(sys.executable)  # `mlflow models serve` runs its server from the venv's bin
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "3"}
    log = open(workdir / "serve.log", "wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{model.model_id}",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (workdir / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (workdir / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        status, body = post(f"{url}/invocations", {"inputs": x[:2].tolist()})
        assert status == 200, body
        expected = keras.saving.load_model(str(workdir / "ckpt" / "1.keras")).predict(x[:2], verbose=0)
        np.testing.assert_allclose(np.asarray(json.loads(body)["predictions"]), expected, rtol=1e-5, atol=1e-6)
        status, body = post(f"{url}/invocations", {"inputs": x[:2, :3].tolist()})  # 3 features, not 4
        assert status == 400, body
        assert "shape" in body.lower(), body
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
