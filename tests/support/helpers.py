"""Test helpers shared by test modules (tiny models, data, fits, metric injection, files, git); no tracker.

What reads MLflow back is in `support.mlflow_runs`, so tests of the core import no tracker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

from tracked_ckpt.files import sha256_file

# -- tiny models and data -------------------------------------------------------------------


def make_model(name: str = "tiny") -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)],
        name=name,
    )
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


def make_data(n: int = 40):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [0.3]], dtype="float32")).astype("float32")
    return x, y


class InjectMetric(keras.callbacks.Callback):
    """Put a scripted value into the epoch logs (callbacks share the logs dict, in list order)."""

    def __init__(self, key: str, values: list[float | None]):
        super().__init__()
        self.key, self.values = key, values

    def on_epoch_end(self, epoch, logs=None):
        value = self.values[epoch]
        if value is None:
            logs.pop(self.key, None)
        else:
            logs[self.key] = value


class StopAfterEpoch(keras.callbacks.Callback):
    """Raise `error(arg)` at the end of (1-based) epoch `after_epoch`, None: never.

    The default is what a preempted job's fit sees, KeyboardInterrupt("preempted");
    `StopAfterEpoch(2, SystemExit, 0)` is what Ray Tune does to a trial it stops.
    """

    def __init__(self, after_epoch: int | None, error: type[BaseException] = KeyboardInterrupt, arg="preempted"):
        super().__init__()
        self.after_epoch, self.error, self.arg = after_epoch, error, arg

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after_epoch:
            raise self.error(self.arg)


class KillAtEpochEnd(keras.callbacks.Callback):
    """SIGKILL this process at the end of (0-based) epoch `epoch`: a job killed with no chance to clean up."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class Preempted(Exception):
    """What a test's own signal handler raises, so that a preempted fit ends and the test process lives on."""


class SignalMidEpoch(keras.callbacks.Callback):
    """Send this process `sig` after the second batch of the second epoch (a preemption mid-epoch)."""

    def __init__(self, sig: int = signal.SIGUSR1):
        super().__init__()
        self.sig = sig

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:
            signal.raise_signal(self.sig)


def fit(callback, epochs: int = 3, *, extra=(), batch_size: int = 8, model=None, validation: bool = True):
    """Fit `model` (a new make_model() by default) on make_data() with `extra` callbacks, then `callback`.

    A quarter of the data is for validation unless `validation=False`. Returns (model, history).
    """
    model = model or make_model()
    x, y = make_data()
    history = model.fit(
        x,
        y,
        validation_split=0.25 if validation else 0.0,
        epochs=epochs,
        batch_size=batch_size,
        verbose=0,
        callbacks=[*extra, callback],
    )
    return model, history


def save_trained_model(path: str = "ckpt.keras"):
    """make_model() trained one epoch on make_data(), saved to `path`; returns (model, x)."""
    model = make_model()
    x, y = make_data()
    model.fit(x, y, epochs=1, verbose=0)
    model.save(path)
    return model, x


# -- child processes ------------------------------------------------------------------------------

CHILDREN = Path(__file__).resolve().parent.parent / "children"


def child(name: str, *args) -> list[str]:
    """The command line running tests/children/<name>.py with `args` (as strings) in this interpreter."""
    return [sys.executable, str(CHILDREN / f"{name}.py"), *(str(arg) for arg in args)]


# -- files --------------------------------------------------------------------------------------


def sha256(path) -> str:
    """The hex sha256 of a file's bytes (the package's own reader; test_spool.py pins it to hashlib)."""
    return sha256_file(os.fspath(path))[0]


# -- git repositories -----------------------------------------------------------------------------

# Used where the environment names no author or committer (conftest's isolated_git names its own).
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def git(cwd, *args: str) -> str:
    """Run the `git` CLI in `cwd` (fails on a nonzero exit); return its stdout, stripped."""
    env = {**GIT_IDENTITY, **os.environ}
    result = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return result.stdout.strip()


def make_repo(path, *, commits: int = 1, branch: str = "main") -> Path:
    """A git repository at `path` (made if missing) on `branch`, with `commits` commits of train.py."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    for i in range(commits):
        (path / "train.py").write_text(f"print({i})\n")
        git(path, "add", "train.py")
        git(path, "commit", "-q", "-m", f"commit {i}")
    return path


def head(path) -> str:
    """The commit a repository's HEAD points at."""
    return git(path, "rev-parse", "HEAD")


# -- a small installed package of Keras layers ------------------------------------------------


LAYER_PACKAGE_SOURCE = '''import keras


@keras.saving.register_keras_serializable(package="{name}")
class {cls}(keras.layers.Layer):
    """Multiplies its input by a constant factor."""

    def __init__(self, factor=3.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {{**super().get_config(), "factor": self.factor}}
'''


def install_layer_package(root, name: str = "tinylayers", version: str = "0.1.0", cls: str = "Triple") -> str:
    """Build a one-module wheel defining a registered Keras layer and `pip install --target` it.

    Returns the target folder: put it on sys.path to "have the package installed",
    take it off to "lack" it. The wheel is written by hand (a zip with its dist-info),
    so no build backend runs: about a second, for pip.
    """
    import base64
    import hashlib
    import os
    import subprocess
    import sys
    import zipfile

    source = LAYER_PACKAGE_SOURCE.format(name=name, cls=cls)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: tracked-ckpt-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{info}/top_level.txt": f"{name}\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    os.makedirs(root, exist_ok=True)
    wheel = os.path.join(str(root), f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    target = os.path.join(str(root), "site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            target,
            wheel,
        ],
        check=True,
    )
    return target
