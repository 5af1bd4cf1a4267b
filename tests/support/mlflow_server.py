"""A real `mlflow server` for tests and benchmarks: sqlite backend, proxied artifacts, free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on a free 127.0.0.1 port: sqlite backend, proxied artifacts, 1 worker, no job runner.

    `stop()` and `start()` keep the same store and port, so a test can take the
    server away in the middle of training and bring it back.
    """

    def __init__(self, root: str, serve_artifacts: bool = True):
        self.root = root
        # False: `--no-serve-artifacts`, clients write the store (a local folder here) themselves.
        self.serve_artifacts = serve_artifacts
        os.makedirs(root, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = os.path.join(root, "mlflow.db")
        self.artifacts = os.path.join(root, "artifacts")
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    def start(self, timeout: float = 300.0) -> MlflowServer:  # minutes on a busy shared machine
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        log = open(os.path.join(self.root, "server.log"), "ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.db}",
                *(
                    ["--artifacts-destination", self.artifacts]
                    if self.serve_artifacts
                    else ["--default-artifact-root", self.artifacts, "--no-serve-artifacts"]
                ),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.startup_seconds = time.monotonic() - started
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not become healthy in {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.proc = None

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.root, "server.log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
