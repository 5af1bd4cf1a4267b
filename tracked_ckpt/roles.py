"""Which process of a multi-process job is the chief, on every Keras backend.

Only the chief talks to the tracker; the other processes still save (saving can be
collective) into a private folder they delete. TensorFlow's `TF_CONFIG` clusters are
handled next to the callback; this module covers the two other ways Keras 3 jobs
run on several processes:

- JAX: `keras.distribution.initialize(...)` (which calls `jax.distributed.initialize`):
  the chief is process 0, as in `OrbaxCheckpoint`'s `is_primary_host()`.
- PyTorch: `torch.distributed` (e.g. under `torchrun`): the chief is rank 0.

Neither framework is imported here: a process that has not imported it is not
running a job of that kind.
"""

from __future__ import annotations

import os
import sys


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
