"""Head surgery: grow a classifier's output layer by one unit per new class.

The old kernel and bias are copied into the first N units, so old class indices never move
and, right after surgery, the old classes' logits are exactly what they were: their
probabilities rank exactly as before. New units start from the mean of the old kernel
columns with the lowest old bias, so a new class begins plausible but not dominant.
"""

from __future__ import annotations

import keras
import numpy as np

from pipelines.models.modelfile import LoadedModel


def grow_head(loaded: LoadedModel, new_classes: list[str]) -> LoadedModel:
    """A new model with ``len(new_classes)`` more outputs; ``loaded`` stays intact."""
    if not new_classes:
        return loaded
    clash = sorted(set(new_classes) & set(loaded.class_names))
    if clash:
        raise ValueError(f"classes {clash} are already outputs of the model")
    model = keras.models.clone_model(loaded.model)
    model.set_weights(loaded.model.get_weights())
    old = model.get_layer("logits")
    kernel, bias = old.get_weights()
    n_new = len(new_classes)
    new_kernel = np.repeat(kernel.mean(axis=1, keepdims=True), n_new, axis=1)
    new_bias = np.full(n_new, bias.min(), dtype=bias.dtype)
    logits = keras.layers.Dense(kernel.shape[1] + n_new, name="logits")(old.input)
    outputs = keras.layers.Softmax(name="probabilities")(logits)
    grown = keras.Model(model.inputs, outputs, name=model.name)
    grown.get_layer("logits").set_weights(
        [np.concatenate([kernel, new_kernel], axis=1), np.concatenate([bias, new_bias])]
    )
    card = {**loaded.card, "grown_with": list(new_classes)}
    return LoadedModel(grown, [*loaded.class_names, *new_classes], card)
