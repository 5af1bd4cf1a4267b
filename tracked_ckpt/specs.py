"""The input and output tensors of a Keras model, as plain data a record can carry.

Read off the model's symbolic `inputs` / `outputs` (no data, no forward pass): a
few attribute reads on the training thread. Trackers turn them into their own
description later, off that thread (MLflow: a model signature).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("tracked_ckpt")


def io_specs(model: Any) -> dict[str, list[dict[str, Any]]] | None:
    """`{"inputs": [...], "outputs": [...]}` of a built model, each tensor as `{"name", "dtype", "shape"}`.

    None when the model has no symbolic inputs and outputs to describe (a subclassed
    model, a model not built yet, nested structures Keras cannot flatten).

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> io_specs(model)["inputs"][0]["shape"]
        [None, 4]
    """
    try:
        inputs, outputs = list(model.inputs or []), list(model.outputs or [])
        if not inputs or not outputs:
            raise ValueError("the model has no symbolic inputs or outputs")
        return {"inputs": [_tensor(t) for t in inputs], "outputs": [_tensor(t) for t in outputs]}
    except Exception as exc:  # AttributeError (subclassed/unbuilt models), odd dtypes or shapes
        logger.debug("The inputs and outputs of %s cannot be described: %s", getattr(model, "name", model), exc)
        return None


def _tensor(tensor: Any) -> dict[str, Any]:
    shape = [None if d is None else int(d) for d in tensor.shape]
    return {"name": getattr(tensor, "name", None), "dtype": str(tensor.dtype), "shape": shape}
