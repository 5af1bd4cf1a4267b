"""Chief-only logging under Keras's own multi-process distribution on JAX: two real processes.

`keras.distribution.initialize` joins two processes on 127.0.0.1 (JAX's CPU
collectives through gloo), both train one data-parallel model and both save;
only process 0 talks to MLflow, process 1 saves into a private folder it deletes.
"""

from __future__ import annotations

import os
import subprocess

import mlflow
import pytest
from support.helpers import child
from support.mlflow_runs import logged_models
from support.mlflow_server import free_port


@pytest.mark.slow
def test_only_process_zero_logs_under_keras_jax_distribution(embedded_store, workdir):
    port = str(free_port())
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    # Output to files, not pipes: a worker blocked on a full pipe would stall the other in a collective.
    logs = [open(workdir / f"worker-{i}.log", "w") for i in range(2)]
    workers = [
        subprocess.Popen(
            child("jax_distributed_fit", i, port),
            cwd=workdir,
            env=env,
            stdout=logs[i],
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for worker in workers:
            worker.wait(timeout=900)
    finally:
        for worker, log in zip(workers, logs):
            if worker.poll() is None:
                worker.kill()
            log.close()
    outputs = [(workdir / f"worker-{i}.log").read_text() for i in range(2)]
    for worker, out in zip(workers, outputs):
        assert worker.returncode == 0, out[-3000:]
    results = [line.split()[1:] for out in outputs for line in out.splitlines() if line.startswith("RESULT ")]
    assert sorted(results) == [["0", "2", "True"], ["1", "2", "False"]], outputs
    assert "Worker 1 is not the chief" in outputs[1]

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1, [r.info.run_id for r in runs]  # process 1 started no run
    models = logged_models(runs[0].info.run_id)
    assert [m.name for m in models] == ["mp-e0001", "mp-e0002"]
    # Both epochs on disk once (the chief's files); process 1's private folder is gone.
    assert sorted(os.listdir(workdir / "ckpt")) == [".tracked_ckpt", "mp-1.keras", "mp-2.keras"] or sorted(
        os.listdir(workdir / "ckpt")
    ) == ["mp-1.keras", "mp-2.keras"]
    assert not list(workdir.glob("**/workertemp_*"))
