"""One of two processes joined by keras.distribution on JAX, each saving with TrackedModelCheckpoint.

Used by tests/test_multiprocess.py: `python jax_distributed_fit.py PROCESS_ID PORT`, in
the shared working folder, with KERAS_BACKEND=jax. Prints
`RESULT <process id> <process count> <is chief>`.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(process_id: int, port: str) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    import keras

    keras.distribution.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=keras.distribution.list_devices(), auto_shard_dataset=False)
    )
    logging.basicConfig(level=logging.INFO)
    from support.helpers import make_data, make_model

    from tracked_ckpt import TrackedModelCheckpoint

    x, y = make_data(64)
    x, y = x[process_id::2], y[process_id::2]  # each process feeds its own shard
    callback = TrackedModelCheckpoint("ckpt/mp-{epoch}.keras", monitor="loss")
    make_model("mp").fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    print("RESULT", process_id, jax.process_count(), callback._chief, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
