"""What `run.py` compares: the variants, the baseline of every ratio, the variants of the realistic rows,
and the shape of a checkpoint-dominated fit. Constants only, so measuring, judging and rendering share
them without importing one another."""

from __future__ import annotations

BATCH = 32
N_TRAIN = 64  # 2 batches per epoch
N_VAL = 16

VARIANTS = [
    ("none", "no checkpointing"),
    ("keras", "keras.callbacks.ModelCheckpoint"),
    ("tracked_async_server", "TrackedModelCheckpoint async -> MLflow server"),
    ("tracked_nowait_server", "TrackedModelCheckpoint async, blocking=False -> MLflow server"),
    ("tracked_sync_server", "TrackedModelCheckpoint sync -> MLflow server"),
    ("tracked_async_embedded", "TrackedModelCheckpoint async -> embedded sqlite store"),
    ("tracked_wandb_offline", "TrackedModelCheckpoint async -> W&B offline"),
    ("mlflow_callback", "mlflow.tensorflow.MlflowModelCheckpointCallback -> server"),
    ("wandb_callback", "wandb WandbModelCheckpoint offline"),
    ("naive_log_model", "per-epoch mlflow.keras.log_model -> server"),
]
BASELINE = "keras"
REALISTIC_VARIANTS = ("keras", "tracked_async_server", "tracked_nowait_server")
