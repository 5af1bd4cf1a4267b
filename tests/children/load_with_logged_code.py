"""`tracked_ckpt.load_model` where the model's local module is not importable (tests/test_loads_anywhere.py).

`python load_with_logged_code.py NAME... < rows.json`: exits with a message if the test's
local module `my_layers` is importable here (the model must bring its own code); loads
each registered model's champion and prints one JSON line per name: its predictions or
its error, and whether the load left `sys.path` and `sys.modules` as they were.
"""

import json
import sys

import numpy as np

import tracked_ckpt


def main(names: list[str]) -> None:
    try:
        import my_layers
    except ImportError:
        pass
    else:
        sys.exit("my_layers is importable here: the test would prove nothing")
    x = np.asarray(json.loads(sys.stdin.read()), dtype="float32")
    for name in names:
        path_before, modules_before = list(sys.path), set(sys.modules)
        result: dict = {"name": name}
        try:
            model = tracked_ckpt.load_model(name, alias="champion", compile=False)
            result["predictions"] = np.asarray(model.predict(x, verbose=0)).tolist()
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        result["sys_path_unchanged"] = sys.path == path_before
        result["modules_left"] = sorted(m for m in set(sys.modules) - modules_before if m.startswith("my_layers"))
        try:
            import my_layers  # noqa: F401
        except ImportError:
            result["importable_after"] = False
        else:
            result["importable_after"] = True
        print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
