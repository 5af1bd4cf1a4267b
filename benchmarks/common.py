"""Shared helpers for the benchmarks: a real local MLflow server, models of a given checkpoint size,
machine/version info, and small statistics helpers."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
#: The Keras hooks a checkpoint callback spends training-thread time in (the benchmarks time each).
HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_epoch_end",
    "on_train_end",
)

sys.path.insert(0, os.path.join(REPO, "tests"))
from support.mlflow_server import MlflowServer, free_port  # noqa: E402,F401  (one server wrapper for tests and benchmarks)

# Dense stacks whose `.keras` checkpoint (weights + Adam's two moment slots, ~12 bytes/param)
# is about the nominal size. Input dim 32, `layers` hidden Dense(width, relu), Dense(1).
SIZES = {
    "10MB": (640, 3),
    "60MB": (1024, 6),
    "250MB": (2048, 6),
}
INPUT_DIM = 32


def build_model(size: str, name: str = "bench"):
    import keras

    width, layers = SIZES[size]
    model = keras.Sequential(
        [keras.Input((INPUT_DIM,))]
        + [keras.layers.Dense(width, activation="relu") for _ in range(layers)]
        + [keras.layers.Dense(1)],
        name=name,
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def tiny_data(n: int = 64, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((n, INPUT_DIM), dtype="float32")
    y = rng.random((n, 1), dtype="float32")
    return x, y


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                    break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "memory": mem, "cpu": cpu, "os": platform.platform()}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "mlflow", "wandb", "tracked-ckpt"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- CPU accounting: this benchmark's processes vs everything else on the machine ---------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, int, float]]:
    """pid -> (ppid, pgid, cpu seconds) for every process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(name)] = (int(fields[1]), int(fields[2]), (int(fields[11]) + int(fields[12])) / _TICK)
    return table


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all CPUs) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


def cpu_snapshot(server_pgid: int | None = None) -> dict[str, float]:
    """Busy CPU of the machine, of this process tree (incl. the MLflow server), and of the server alone."""
    table = _proc_table()
    me = os.getpid()
    own = server = 0.0
    for pid, (_ppid, pgid, cpu) in table.items():
        if server_pgid is not None and pgid == server_pgid:
            server += cpu
        p, seen = pid, 0
        while p and seen < 64:
            if p == me:
                own += cpu
                break
            p = table.get(p, (0, 0, 0.0))[0]
            seen += 1
    return {"machine": machine_busy_seconds(), "tree": own, "server": server, "wall": time.monotonic()}


def other_cpu_between(a: dict[str, float], b: dict[str, float]) -> float:
    """CPU seconds used by processes outside this benchmark between two snapshots (>= 0)."""
    return max(0.0, (b["machine"] - a["machine"]) - (b["tree"] - a["tree"]))


def wait_for_quiet(
    server_pgid: int | None, threshold_cores: float = 0.25, window: float = 0.3, max_wait: float = 15.0
) -> float:
    """Wait (up to `max_wait` s) until other processes use < `threshold_cores` CPUs; return seconds waited."""
    started = time.monotonic()
    while True:
        a = cpu_snapshot(server_pgid)
        time.sleep(window)
        b = cpu_snapshot(server_pgid)
        load = other_cpu_between(a, b) / (b["wall"] - a["wall"])
        waited = time.monotonic() - started
        if load < threshold_cores or waited >= max_wait:
            return waited
        time.sleep(0.5)
