"""Load a registered model's champion and predict, on whatever Keras backend this process has (tests/test_backends.py).

`python load_and_predict.py NAME`, with the rows to predict as JSON on stdin; prints one
JSON line: {"backend": ..., "predictions": [...]}.
"""

from __future__ import annotations

import json
import sys

import keras
import numpy as np

import tracked_ckpt


def main(name: str) -> None:
    model = tracked_ckpt.load_model(name, alias="champion")
    x = np.asarray(json.loads(sys.stdin.read()), dtype="float32")
    print(
        json.dumps(
            {"backend": keras.backend.backend(), "predictions": np.asarray(model.predict(x, verbose=0)).tolist()}
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
