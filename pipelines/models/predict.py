"""Predict: class probabilities for decoded images, with optional test-time augmentation.

The model is called directly through a ``tf.function`` in fixed-size chunks (never
``model.predict`` per call). TTA averages the probabilities of each image and its
horizontal mirror; it is deterministic.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def predict_proba(
    model: keras.Model, x: np.ndarray, tta: bool = False, batch_size: int = 512
) -> np.ndarray:
    """Probabilities (N, K) for images ``x`` (N, H, W, 3; 0-255)."""
    return outputs(model, x, batch_size, mirror=tta)


def outputs(
    model: keras.Model, x: np.ndarray, batch_size: int = 512, mirror: bool = False
) -> np.ndarray:
    """What ``model`` outputs for ``x`` in inference mode (probabilities, or the features of
    a part of a model), in chunks; ``mirror`` averages each input with its mirror."""

    @tf.function(reduce_retracing=True, autograph=False)
    def call(batch):
        out = model(batch, training=False)
        if mirror:
            out = (out + model(tf.reverse(batch, axis=[2]), training=False)) / 2.0
        return out

    chunks = [
        call(tf.constant(x[i : i + batch_size], tf.float32)).numpy()
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, *model.output_shape[1:]))


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == y).mean()) if len(y) else float("nan")
