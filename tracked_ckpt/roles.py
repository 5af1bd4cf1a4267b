"""Which process of a multi-process job is the chief, on every Keras backend.

Only the chief talks to the tracker; the other processes still save (saving can be
collective) into a private folder they delete. Keras 3 jobs run on several processes
in three ways:

- TensorFlow: a `TF_CONFIG` cluster (tf.distribute multi-worker): the chief is the
  "chief" task, or worker 0 when the cluster has none.

- JAX: `keras.distribution.initialize(...)` (which calls `jax.distributed.initialize`):
  the chief is process 0, as in `OrbaxCheckpoint`'s `is_primary_host()`.
- PyTorch: `torch.distributed` (e.g. under `torchrun`): the chief is rank 0.

Neither framework is imported here: a process that has not imported it is not
running a job of that kind.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def chief_role(model: Any = None) -> tuple[bool, Any]:
    """(is this process the chief, its task id or process index); outside a multi-process job: (True, None).

    Example:
        >>> chief_role()  # a plain single-process job
        (True, None)
    """
    return process_role() or tf_config_role(model)


def process_role() -> tuple[bool, int] | None:
    """(is this process the chief, its process index), or None outside a JAX/torch multi-process job.

    Example:
        >>> process_role()  # a plain single-process job
    """
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            count, index = jax.process_count(), jax.process_index()
        except Exception:  # a JAX without a backend yet: not a multi-process job
            count, index = 1, 0
        if count > 1:
            return index == 0, index
    torch = sys.modules.get("torch")
    distributed = getattr(torch, "distributed", None) if torch is not None else None
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        if distributed.get_world_size() > 1:
            rank = distributed.get_rank()
            return rank == 0, rank
        return None
    if torch is not None and _int_env("WORLD_SIZE") > 1 and "RANK" in os.environ:
        # torchrun sets these before the process group exists (or when the script never creates one).
        rank = _int_env("RANK")
        return rank == 0, rank
    return None


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0


def tf_config_role(model: Any = None) -> tuple[bool, Any]:
    """(is this process the chief, its task id) under tf.distribute multi-worker training.

    The chief is the "chief" task, or worker 0 when the cluster has no chief,
    as in TensorFlow's multi-worker tutorial. Outside a cluster: the chief.
    """
    strategy = getattr(model, "distribute_strategy", None)
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if resolver is None or task_type is None:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task = config.get("task") or {}
        if not task:
            return True, None
        task_type, task_id, cluster = task.get("type"), task.get("index", 0), config.get("cluster", {})
    else:
        task_id, cluster = resolver.task_id, resolver.cluster_spec().as_dict()
    if task_type == "chief":
        return True, task_id
    is_chief = task_type == "worker" and int(task_id or 0) == 0 and "chief" not in cluster
    return is_chief, task_id
