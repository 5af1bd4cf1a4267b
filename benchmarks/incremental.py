"""Incremental storage (issue 25): what a checkpoint costs stored as a manifest of chunks vs a full copy.

Rows (each against a real local `mlflow server` with proxied artifacts, through a counting TCP
proxy, so bytes and requests are what went over the wire):

* `transfer`: a frozen `keras.applications.EfficientNetB0` backbone (`weights=None`, 96x96 inputs)
  with a trainable head, Adam: the canonical transfer-learning fine-tune.
* `frozen-1.5GB`: a frozen Dense(`--big-units`) base on as many inputs with a trainable Dense(10)
  head, Adam (20000 units: a 1.6 GB `.keras` file, the issue's model).
* `full-60MB`: today's 60 MB row (Dense 6x1024, Adam, every weight trained): incremental storage
  at its worst, where every byte changes.
* `sweep`: 4 trials of the `transfer` model sharing one frozen base, one experiment,
  `storage="incremental"`: bytes each trial uploads (the base should be paid once).

Variants: `plain` (`keras.callbacks.ModelCheckpoint`), `full` and `incremental`
(`TrackedModelCheckpoint(storage=...)`, async upload). Every variant is warmed once, then run in
`--pairs` rounds, the order of variants rotated each round; each run logs into a fresh
experiment, whose artifacts are measured, then deleted. Columns: fit wall and process CPU
seconds (all threads), their median ratio to `plain` over rounds, bytes uploaded for the first
checkpoint and per later checkpoint, requests per checkpoint, bytes stored after the fit (the
experiment's artifact folder on the server) relative to one checkpoint file, cold `load_model` of
the last checkpoint (empty cache) and of the one before it right after (warm: a second version
of the same run).

Run: `.venv/bin/python benchmarks/incremental.py [--rows transfer,full-60MB,frozen-1.5GB,sweep]
[--pairs 7] [--epochs 5] [--big-units 20000]`. Raw numbers: `benchmarks/out/incremental-<time>.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import OUT, MlflowServer, build_model, machine_info, tiny_data, versions, wait_for_quiet  # noqa: E402
from support.tcp_proxy import TcpProxy  # noqa: E402  (common.py puts tests/ on the path)

os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

VARIANTS = ("plain", "full", "incremental")


def _transfer_model(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    base = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(96, 96, 3))
    base.trainable = False
    inputs = keras.Input((96, 96, 3))
    features = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(10)(features), name="transfer")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _transfer_data(n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.random((n, 96, 96, 3), dtype=np.float32), rng.integers(0, 10, n)


def _frozen_model(units: int):
    import keras

    inputs = keras.Input((units,))
    base = keras.layers.Dense(units, activation="relu", trainable=False)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(base), name="frozen")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _frozen_data(units: int, n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.random((n, units), dtype=np.float32), rng.integers(0, 10, n)


def _dense_data(n: int, seed: int):
    return tiny_data(n, seed=seed)


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


class Bench:
    """One server, one proxy, one scratch folder for the whole benchmark."""

    def __init__(self, work: str, server: MlflowServer, proxy: TcpProxy):
        self.work, self.server, self.proxy = work, server, proxy
        self.count = 0

    def run(
        self, label: str, model, data, variant: str, epochs: int, load: bool = True, counting: bool = False
    ) -> dict[str, Any]:
        """One fit of `model` with `variant`'s callback into a fresh experiment; its costs.

        Timed runs talk to the server directly; a `counting` run goes through the proxy (whose
        pumping threads would add their CPU to this process's) to count requests and bytes.
        """
        import keras
        import mlflow

        import tracked_ckpt

        self.count += 1
        uri = self.proxy.url if counting else self.server.url
        mlflow.set_tracking_uri(uri)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        folder = os.path.join(self.work, f"run-{self.count}")
        os.makedirs(folder)
        os.environ["TRACKED_CKPT_CACHE"] = os.path.join(folder, "cache")
        experiment = f"{label}-{variant}-{self.count}"
        experiment_id = mlflow.create_experiment(experiment)
        pattern = os.path.join(folder, "ckpt", "m-{epoch}.keras")
        if variant == "plain":
            callback: keras.callbacks.Callback = keras.callbacks.ModelCheckpoint(pattern, monitor="loss")
        else:
            callback = tracked_ckpt.TrackedModelCheckpoint(pattern, monitor="loss", storage=variant)
        x, y = data
        with mlflow.start_run(experiment_id=experiment_id) as run:
            self.proxy.reset()
            wall, cpu = time.perf_counter(), time.process_time()
            model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=[callback])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            requests, uploaded = len(self.proxy.requests), self.proxy.bytes_up
        result: dict[str, Any] = {"fit_s": wall, "cpu_s": cpu}
        if counting:
            result.update(requests=requests, bytes_up=uploaded)
        file_size = os.path.getsize(pattern.format(epoch=epochs))
        result["file_bytes"] = file_size
        if variant != "plain":
            report = callback.last_report
            assert report is not None and report.ok and len(report.logged) == epochs, report
            result["stored_bytes"] = _du(os.path.join(self.server.artifacts, experiment_id))
            result["per_checkpoint_up"] = self._per_checkpoint_bytes(run.info.run_id, experiment_id)
            if load:
                found = tracked_ckpt.list_checkpoints(run_id=run.info.run_id)
                last, before = found[-1], found[-2]
                # The download alone (what the chunk store changes), then `load_model` (what a user
                # waits for), each cold (empty caches: the fit's writer left its packs in the pack
                # cache, which a machine loading the checkpoint elsewhere lacks) and for a second
                # version of the same run.
                shutil.rmtree(os.environ["TRACKED_CKPT_CACHE"], ignore_errors=True)
                started = time.perf_counter()
                tracked_ckpt.download_checkpoint(checkpoint=last)
                result["cold_download_s"] = time.perf_counter() - started
                started = time.perf_counter()
                tracked_ckpt.download_checkpoint(checkpoint=before)
                result["second_download_s"] = time.perf_counter() - started
                shutil.rmtree(os.environ["TRACKED_CKPT_CACHE"], ignore_errors=True)
                started = time.perf_counter()
                tracked_ckpt.load_model(checkpoint=last, compile=False)
                result["cold_load_s"] = time.perf_counter() - started
                started = time.perf_counter()
                tracked_ckpt.load_model(checkpoint=before, compile=False)
                result["second_load_s"] = time.perf_counter() - started
        shutil.rmtree(os.path.join(self.server.artifacts, experiment_id), ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        return result

    def _per_checkpoint_bytes(self, run_id: str, experiment_id: str) -> list[int]:
        """Bytes each checkpoint added to the store, in the order they were logged.

        A full checkpoint adds its file. An incremental one adds the packs its manifest is the
        first to reference (a pack is written for the checkpoint that needed its chunks).
        """
        import tracked_ckpt
        from tracked_ckpt.packs import Manifest

        root = os.path.join(self.server.artifacts, experiment_id)
        seen: set[str] = set()
        added = []
        for checkpoint in tracked_ckpt.list_checkpoints(run_id=run_id):
            manifest = os.path.join(root, "models", checkpoint.id, "artifacts", "checkpoint.manifest.json")
            if not os.path.exists(manifest):
                added.append(checkpoint.record.size_bytes)
                continue
            with open(manifest, "rb") as handle:
                packs = set(Manifest.from_bytes(handle.read()).packs) - seen
            seen |= packs
            added.append(sum(os.path.getsize(os.path.join(root, "tracked-ckpt-chunks", "packs", p)) for p in packs))
        return added


def _rounds(bench: Bench, label: str, make: Callable[[], Any], data, epochs: int, pairs: int) -> dict[str, Any]:
    model = make()
    for variant in VARIANTS:  # warm every variant: traced functions, imports, the server's first writes
        bench.run(label, model, data, variant, epochs=2, load=variant != "plain")
    counted = {v: bench.run(label, model, data, v, epochs, load=False, counting=True) for v in VARIANTS}
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for round_ in range(pairs):
        order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
        wait_for_quiet(os.getpgid(bench.server.proc.pid), max_wait=20.0)
        for variant in order:
            runs[variant].append(bench.run(label, model, data, variant, epochs))
        print(f"  {label}: round {round_ + 1}/{pairs} done", flush=True)
    return {"epochs": epochs, "runs": runs, "counted": counted}


def _sweep(bench: Bench, data, epochs: int, trials: int = 4) -> dict[str, Any]:
    """`trials` fits of the transfer model from one frozen base into one experiment: bytes per trial."""
    import keras
    import mlflow

    import tracked_ckpt

    mlflow.set_tracking_uri(bench.proxy.url)
    os.environ["MLFLOW_TRACKING_URI"] = bench.proxy.url
    base = _transfer_model(seed=0)
    weights = base.get_weights()
    experiment_id = mlflow.create_experiment(f"sweep-{time.time_ns()}")
    folder = tempfile.mkdtemp(dir=bench.work)
    os.environ["TRACKED_CKPT_CACHE"] = os.path.join(folder, "cache")
    uploaded = []
    for trial in range(trials):
        model = _transfer_model(seed=trial)
        # Same frozen base in every trial; only the head's start (and so its training) differs.
        model.set_weights(weights[:-2] + model.get_weights()[-2:])
        model.compile(keras.optimizers.Adam(10.0 ** -(trial + 2)), model.loss)
        with mlflow.start_run(experiment_id=experiment_id):
            bench.proxy.reset()
            callback = tracked_ckpt.TrackedModelCheckpoint(
                os.path.join(folder, f"t{trial}", "m-{epoch}.keras"), monitor="loss", storage="incremental"
            )
            model.fit(*data, epochs=epochs, batch_size=16, verbose=0, callbacks=[callback])
            uploaded.append(bench.proxy.bytes_up)
    file_size = os.path.getsize(os.path.join(folder, "t0", f"m-{epochs}.keras"))
    stored = _du(os.path.join(bench.server.artifacts, experiment_id))
    shutil.rmtree(os.path.join(bench.server.artifacts, experiment_id), ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    return {"file_bytes": file_size, "uploaded_per_trial": uploaded, "stored_bytes": stored, "epochs": epochs}


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def render(label: str, row: dict[str, Any]) -> str:
    """One row's markdown table."""
    runs, epochs = row["runs"], row["epochs"]
    plain = runs["plain"]
    file_bytes = statistics.median(r["file_bytes"] for r in plain)
    lines = [
        f"### {label} (`.keras` file {_mb(file_bytes)}, {epochs} epochs, {len(plain)} rounds)",
        "",
        "| variant | fit s | × plain | process CPU s | × plain | our CPU / ckpt s | first ckpt up | later ckpt up "
        "| requests / ckpt (counted) | stored / one file | cold download s | 2nd version download s (× cold) "
        "| cold load s | 2nd version load s (× cold) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        rs = runs[variant]
        fit_ratio = statistics.median(r["fit_s"] / p["fit_s"] for r, p in zip(rs, plain, strict=True))
        cpu_ratio = statistics.median(r["cpu_s"] / p["cpu_s"] for r, p in zip(rs, plain, strict=True))
        ours = statistics.median((r["cpu_s"] - p["cpu_s"]) / epochs for r, p in zip(rs, plain, strict=True))
        cells = [
            variant,
            _spread([r["fit_s"] for r in rs]),
            f"{fit_ratio:.2f}",
            _spread([r["cpu_s"] for r in rs]),
            f"{cpu_ratio:.2f}",
            "–" if variant == "plain" else f"{ours:.2f}",
        ]
        if variant == "plain":
            cells += ["–"] * 8
        else:
            first = statistics.median(r["per_checkpoint_up"][0] for r in rs)
            later = statistics.median(statistics.median(r["per_checkpoint_up"][1:]) for r in rs)
            stored = statistics.median(r["stored_bytes"] / r["file_bytes"] for r in rs)
            cold = statistics.median(r["cold_load_s"] for r in rs)
            cold_dl = statistics.median(r["cold_download_s"] for r in rs)
            second_dl = statistics.median(r["second_download_s"] / r["cold_download_s"] for r in rs)
            second = statistics.median(r["second_load_s"] / r["cold_load_s"] for r in rs)
            cells += [
                _mb(first),
                _mb(later),
                f"{row['counted'][variant]['requests'] / epochs:.1f}",
                f"{stored:.2f}x",
                f"{cold_dl:.2f}",
                f"{statistics.median(r['second_download_s'] for r in rs):.2f} ({second_dl:.2f}x)",
                f"{cold:.2f}",
                f"{statistics.median(r['second_load_s'] for r in rs):.2f} ({second:.2f}x)",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    wire = {v: row["counted"][v]["bytes_up"] / epochs for v in ("full", "incremental")}
    lines += [
        "",
        f"On the wire (a counting run through the proxy, requests included), per checkpoint: full {_mb(wire['full'])}, "
        f"incremental {_mb(wire['incremental'])}.",
        "",
    ]
    return "\n".join(lines)


def render_sweep(row: dict[str, Any]) -> str:
    per = ", ".join(_mb(b) for b in row["uploaded_per_trial"])
    return (
        f"### sweep: 4 trials sharing a frozen EfficientNetB0 base (file {_mb(row['file_bytes'])}, "
        f'{row["epochs"]} epochs each, `storage="incremental"`, one experiment)\n\n'
        f"Uploaded per trial (whole fit, on the wire): {per}; the experiment stores "
        f"{_mb(row['stored_bytes'])} ({row['stored_bytes'] / row['file_bytes']:.2f}x one file).\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="transfer,full-60MB,frozen-1.5GB,sweep")
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--big-units", type=int, default=20000)
    args = parser.parse_args(argv)
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    rows = args.rows.split(",")
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-incremental-", dir=OUT)
    results: dict[str, Any] = {"machine": machine_info(), "versions": versions(), "args": vars(args)}
    started = time.time()
    try:
        with MlflowServer(os.path.join(work, "server")) as server, TcpProxy(server.url) as proxy:
            mlflow.set_tracking_uri(proxy.url)
            os.environ["MLFLOW_TRACKING_URI"] = proxy.url
            bench = Bench(work, server, proxy)
            makers = {
                "transfer": (_transfer_model, _transfer_data(64, 0)),
                "full-60MB": (lambda: build_model("60MB"), _dense_data(64, 0)),
                "frozen-1.5GB": (lambda: _frozen_model(args.big_units), _frozen_data(args.big_units, 32, 0)),
            }
            for row in rows:
                print(f"{row}:", flush=True)
                if row == "sweep":
                    results[row] = _sweep(bench, _transfer_data(64, 0), args.epochs)
                else:
                    make, data = makers[row]
                    results[row] = _rounds(bench, row, make, data, args.epochs, args.pairs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["minutes"] = (time.time() - started) / 60
    path = os.path.join(OUT, f"incremental-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as out:
        json.dump(results, out, indent=1)
    print(f"\nraw numbers: {path}; {results['minutes']:.1f} min\n")
    for row in rows:
        print(render_sweep(results[row]) if row == "sweep" else render(row, results[row]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
