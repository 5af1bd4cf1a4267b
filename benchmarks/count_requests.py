"""HTTP requests per checkpoint, and per warm `load_model`, counted on the wire.

A counting TCP proxy (`tests/support/tcp_proxy.py`) sits between the client and a real
local `mlflow server`; every request line going through is recorded. Measured:

* a `fit` of `--epochs` epochs with `TrackedModelCheckpoint` (async) into an open
  run: the requests of the whole fit, per checkpoint, and by endpoint;
* `tracked_ckpt.load_model(name, alias="champion")` once the cache is warm.

Runs against whichever `tracked_ckpt` the interpreter imports, so the same script
measures another checkout (e.g. `/path/to/other/.venv/bin/python benchmarks/count_requests.py`).

Usage:
    .venv/bin/python benchmarks/count_requests.py [--epochs 3] [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import MlflowServer, build_model, tiny_data  # noqa: E402
from support.tcp_proxy import TcpProxy  # noqa: E402  (common.py puts tests/ on the path)

os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def _endpoint(path: str) -> str:
    """A request path without ids, e.g. PUT .../artifacts/data/model.keras -> PUT artifacts/data/model.keras."""
    path = path.split("?")[0]
    if "/mlflow-artifacts/artifacts/" in path:
        return "artifacts/" + re.sub(r"^.*/artifacts/", "", path)
    path = re.sub(r"m-[0-9a-f]{32}", "<id>", path)
    return path.replace("/api/2.0/mlflow/", "").replace("/ajax-api/2.0/mlflow/", "")


def measure(epochs: int) -> dict:
    import keras
    import mlflow

    import tracked_ckpt
    from tracked_ckpt import TrackedModelCheckpoint

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    work = tempfile.mkdtemp(prefix="bench-requests-")
    os.chdir(work)
    os.environ["TRACKED_CKPT_CACHE"] = os.path.join(work, "cache")
    with MlflowServer(os.path.join(work, "server")) as server, TcpProxy(server.url) as proxy:
        mlflow.set_tracking_uri(proxy.url)
        os.environ["MLFLOW_TRACKING_URI"] = proxy.url
        model = build_model("10MB")
        x, y = tiny_data(64, seed=0)
        xv, yv = tiny_data(16, seed=1)
        with mlflow.start_run() as run:
            callback = TrackedModelCheckpoint(os.path.join(work, "ckpt", "r-{epoch}.keras"))
            proxy.reset()
            model.fit(x, y, validation_data=(xv, yv), epochs=epochs, batch_size=32, verbose=0, callbacks=[callback])
            fit_requests = list(proxy.requests)
        assert callback.last_report.ok and len(callback.last_report.logged) == epochs, callback.last_report
        tracked_ckpt.promote_best("requests-bench", run_id=run.info.run_id)
        tracked_ckpt.load_model("requests-bench", alias="champion")  # cold: fills the cache
        proxy.reset()
        tracked_ckpt.load_model("requests-bench", alias="champion")
        warm_requests = list(proxy.requests)
    by_endpoint = collections.Counter(f"{m} {_endpoint(p)}" for m, p in fit_requests)
    return {
        "tracked_ckpt": os.path.dirname(os.path.dirname(os.path.abspath(tracked_ckpt.__file__))),
        "keras": keras.__version__,
        "epochs": epochs,
        "fit_requests": len(fit_requests),
        "per_checkpoint": len(fit_requests) / epochs,
        "by_endpoint": dict(sorted(by_endpoint.items())),
        "warm_load_requests": len(warm_requests),
        "warm_load_endpoints": [f"{m} {_endpoint(p)}" for m, p in warm_requests],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    args = parser.parse_args(argv)
    result = measure(args.epochs)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"tracked_ckpt from {result['tracked_ckpt']}")
    print(
        f"fit of {args.epochs} checkpoints: {result['fit_requests']} requests, "
        f"{result['per_checkpoint']:.2f} per checkpoint"
    )
    for endpoint, count in result["by_endpoint"].items():
        print(f"  {count:3d}  {endpoint}")
    print(f"warm load_model: {result['warm_load_requests']} requests: {', '.join(result['warm_load_endpoints'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
