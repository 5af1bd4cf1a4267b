"""A production-shaped MLflow stack for tests: PostgreSQL backend store, S3 (moto) artifact store.

    training processes --HTTP--> mlflow server (2 workers) --SQL--> PostgreSQL (private cluster)
                                                            \\--S3--> moto server (bucket)

Everything runs on 127.0.0.1 on free ports, in a temporary directory, and is
torn down (process groups) by `ProductionStack.stop()`:

* PostgreSQL: Debian's `postgresql` package, installed with apt when missing and
  we are root. A private cluster (`initdb` + `pg_ctl`, trust auth, TCP only on
  127.0.0.1) is created as the `postgres` user; the system service is never used.
* S3: `python -m moto.server`, with a bucket created through boto3.
* `mlflow server --backend-store-uri postgresql://... --artifacts-destination s3://...`,
  with `MLFLOW_S3_ENDPOINT_URL` pointing at moto and dummy AWS credentials, so
  every checkpoint goes through MLflow's real S3 upload and download code.

Run `python tests/support/production_stack.py` to bring the stack up, smoke-test it and
tear it down (prints the timings).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: `support` as a script too

from support.apt import apt_install
from support.mlflow_server import free_port

BUCKET = "tracked-ckpt"
ARTIFACT_PREFIX = "mlartifacts"
# Dummy credentials: moto accepts anything. Never the developer's real ones.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_AWS_DROP = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION")


class StackUnavailable(Exception):
    """A piece of the stack cannot be provided here (the tests skip with this reason)."""


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen | None, grace: float = 20.0) -> None:
    """SIGTERM the process group of `proc` (started with start_new_session), then SIGKILL."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group (workers) too
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def _wait_http(url: str, proc: subprocess.Popen, log: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f}s: {_tail(log)}")


# -- PostgreSQL -----------------------------------------------------------------------------


def postgres_bindir() -> str | None:
    """Debian keeps the server binaries in /usr/lib/postgresql/<major>/bin (not on PATH)."""
    override = os.environ.get("TRACKED_CKPT_PG_BINDIR")
    if override:
        return override
    found = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(os.path.join(d, "initdb"))]
    if found:
        return max(found, key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)
    initdb = shutil.which("initdb")
    return os.path.dirname(os.path.realpath(initdb)) if initdb else None


def ensure_postgres(timeout: float = 1200.0) -> tuple[str, float | None]:
    """Return (PostgreSQL bin dir, seconds spent installing it, or None if it was already there).

    Installs Debian's `postgresql` with apt when it is missing and we are root.
    """
    bindir = postgres_bindir()
    if bindir is not None:
        return bindir, None
    elapsed = apt_install("postgresql", error=StackUnavailable, timeout=timeout)
    bindir = postgres_bindir()
    if bindir is None:
        raise StackUnavailable("apt-get installed postgresql but no initdb was found under /usr/lib/postgresql")
    return bindir, elapsed


class PostgresCluster:
    """A private PostgreSQL cluster in its own directory, TCP on 127.0.0.1 only, trust auth.

    As root, the cluster belongs to (and runs as) the `postgres` user, since
    PostgreSQL refuses to run as root; otherwise it runs as the current user.
    """

    def __init__(self, bindir: str, database: str = "mlflow"):
        self.bindir = bindir
        self.database = database
        self.port = free_port()
        self.user = "postgres"
        # Not under pytest's tmp dir: that is 0700 root, which the postgres user cannot enter.
        self.root = tempfile.mkdtemp(prefix="tracked-ckpt-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "postgres.log")
        self._run_as: dict = {}
        if os.geteuid() == 0:
            import pwd

            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise StackUnavailable("PostgreSQL is installed but there is no `postgres` user to run it as") from None
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._run_as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        self.started = False

    @property
    def url(self) -> str:
        # The driver is explicit: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, not psycopg2.
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", HOME=self.root)
        done = subprocess.run(
            [os.path.join(self.bindir, args[0]), *args[1:]],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **self._run_as,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({done.returncode}): {done.stdout[-1000:]}{done.stderr[-1500:]}\n{_tail(self.log)}"
            )
        return done

    def start(self) -> None:
        self._run("initdb", "-D", self.data, "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                "-c max_connections=200",
                # A throwaway cluster: skip durability work, keep every semantics that matters here.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        # pg_ctl detaches the postmaster into its own session (setsid); stop() ends it.
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")
        self.started = True
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database)

    def postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.started:
            pid = self.postmaster_pid()
            try:
                self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30", "stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                if pid is not None:  # the postmaster leads its own process group
                    for kill in (os.killpg, os.kill):
                        try:
                            kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


# -- S3 (moto) ------------------------------------------------------------------------------


def aws_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _AWS_DROP}
    env.update(AWS_ENV)
    return env


class MotoS3:
    """`python -m moto.server` on a free 127.0.0.1 port, with one bucket."""

    def __init__(self, root: str, bucket: str = BUCKET):
        self.root = root
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(root, "moto.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        try:
            import boto3  # noqa: F401
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise StackUnavailable(
                f"{exc.name} is not installed: pip install -e '.[test]' (moto[server], boto3)"
            ) from None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                env=aws_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            _wait_http(self.endpoint + "/moto-api/", self.proc, self.log, timeout, "moto server")
            self.client().create_bucket(Bucket=self.bucket)
        except BaseException:
            self.stop()
            raise

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        keys = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def stop(self) -> None:
        _kill_group(self.proc)
        self.proc = None


# -- MLflow server --------------------------------------------------------------------------


class StackMlflowServer:
    """`mlflow server` on PostgreSQL with S3 artifacts, proxied (clients never see S3)."""

    def __init__(self, root: str, backend_uri: str, artifacts_destination: str, s3_endpoint: str, workers: int = 2):
        self.root = root
        self.backend_uri = backend_uri
        self.artifacts_destination = artifacts_destination
        self.s3_endpoint = s3_endpoint
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(root, "mlflow-server.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        env = aws_env()
        env.update(MLFLOW_S3_ENDPOINT_URL=self.s3_endpoint, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
            env.pop(key, None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--backend-store-uri",
                    self.backend_uri,
                    "--artifacts-destination",
                    self.artifacts_destination,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                ],
                env=env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            _wait_http(self.url + "/health", self.proc, self.log, timeout, "mlflow server")
        except BaseException:
            self.stop()
            raise

    def log_tail(self) -> str:
        return _tail(self.log)

    def stop(self) -> None:
        _kill_group(self.proc)
        self.proc = None


# -- the whole stack ------------------------------------------------------------------------


class ProductionStack:
    """PostgreSQL + moto S3 + mlflow server; `timings` holds how long each part took to come up."""

    def __init__(self, root: str, workers: int = 2):
        self.root = root
        self.workers = workers
        self.postgres: PostgresCluster | None = None
        self.s3: MotoS3 | None = None
        self.server: StackMlflowServer | None = None
        self.timings: dict[str, float | None] = {}

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def artifacts_destination(self) -> str:
        return f"s3://{BUCKET}/{ARTIFACT_PREFIX}"

    def start(self) -> ProductionStack:
        try:
            import psycopg2  # noqa: F401  (mlflow's postgresql:// backend needs it)
        except ImportError:
            raise StackUnavailable("psycopg2 is not installed: pip install -e '.[test]' (psycopg2-binary)") from None
        t = time.monotonic()
        bindir, self.timings["apt_install"] = ensure_postgres()
        try:
            t = time.monotonic()
            self.postgres = PostgresCluster(bindir)
            self.postgres.start()
            self.timings["postgres"] = time.monotonic() - t
            t = time.monotonic()
            self.s3 = MotoS3(self.root)
            self.s3.start()
            self.timings["moto"] = time.monotonic() - t
            t = time.monotonic()
            self.server = StackMlflowServer(
                self.root, self.postgres.url, self.artifacts_destination, self.s3.endpoint, self.workers
            )
            self.server.start()
            self.timings["mlflow_server"] = time.monotonic() - t
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for part in (self.server, self.s3, self.postgres):
            if part is not None:
                try:
                    part.stop()
                except Exception as exc:  # keep tearing down the rest
                    print(f"teardown of {type(part).__name__} failed: {exc}", file=sys.stderr)
        self.server = self.s3 = self.postgres = None


if __name__ == "__main__":
    work = tempfile.mkdtemp(prefix="tracked-ckpt-stack-")
    started = time.monotonic()
    stack = ProductionStack(work)
    try:
        stack.start()
        print(
            "up in",
            {k: (None if v is None else round(v, 1)) for k, v in stack.timings.items()},
            f"total {time.monotonic() - started:.1f}s",
        )
        print("mlflow", stack.url, "| postgres", stack.postgres.url, "| s3", stack.s3.endpoint)
        import mlflow

        client = mlflow.MlflowClient(stack.url)
        exp = client.create_experiment("smoke")
        run = client.create_run(exp)
        path = os.path.join(work, "hello.txt")
        with open(path, "w") as f:
            f.write("hello")
        client.log_artifact(run.info.run_id, path)
        print("bucket keys:", stack.s3.keys())
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
