"""A small model with a frozen base, for the chunk store's tests: most of each checkpoint never changes.

The `.keras` file is ~3.2 MB: a frozen 512x1536 Dense base (its initializer seeded, so every build
has the same bytes) under a trainable Dense(10) head with Adam, whose weights and moments are all
that change between epochs (~200 KB).
"""

from __future__ import annotations

import keras
import numpy as np


def frozen_base_model(name: str = "frozen") -> keras.Model:
    inputs = keras.Input((512,), name="pixels")
    base = keras.layers.Dense(
        1536, activation="relu", trainable=False, name="base", kernel_initializer=keras.initializers.GlorotUniform(7)
    )
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(base(inputs))
    model = keras.Model(inputs, outputs, name=name)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def frozen_data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 512)).astype("float32"), rng.integers(0, 10, size=(n,))
