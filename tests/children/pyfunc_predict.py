"""Load a logged model with mlflow.pyfunc in a fresh process and predict (tests/test_loads_anywhere.py).

`python pyfunc_predict.py MODEL_URI '<json rows>'`: exits with a message if the test's
local module `my_layers` is importable here (the model must bring its own code);
prints the predictions as one JSON line.
"""

import json
import sys

import numpy as np


def main(model_uri: str, rows: str) -> None:
    try:
        import my_layers  # noqa: F401
    except ImportError:
        pass
    else:
        sys.exit("my_layers is importable here: the test would prove nothing")
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    print(json.dumps(model.predict(np.array(json.loads(rows), dtype="float32")).tolist()))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
