"""Features: what a model sees in an image (the input of its ``logits`` layer), next to its
probabilities, from one call. Drift compares the features of live or new images with the
training images'; the label queue spreads its picks over them.

Each registered version keeps :class:`TrainingFeatures` of a seeded sample of its training
images (``core.contract.TRAINING_FEATURES_ARTIFACT``), so a drift check needs no dataset.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from core.contract import FEATURES_LAYER

TRAINING_SAMPLE = 1000  # training images whose features a registered version keeps


@dataclass(frozen=True)
class TrainingFeatures:
    """Features, labels (indices into ``class_names``) and probabilities of training images,
    and, when the loop works in it, the same images' ImageNet embedding."""

    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int
    probs: np.ndarray  # (N, K) float32
    class_names: list[str]
    imagenet: np.ndarray | None = None  # (N, 1280) float32: pipelines.models.embedding

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        extra = {} if self.imagenet is None else {"imagenet": self.imagenet.astype(np.float32)}
        np.savez_compressed(
            out,
            features=self.features.astype(np.float32),
            labels=self.labels.astype(np.int32),
            probs=self.probs.astype(np.float32),
            class_names=np.array(self.class_names, dtype=str),
            **extra,
        )
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainingFeatures:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            imagenet = z["imagenet"] if "imagenet" in z.files else None
            classes = [str(c) for c in z["class_names"]]
            return cls(z["features"], z["labels"], z["probs"], classes, imagenet)

    def centroids(self) -> np.ndarray:
        """Mean feature of each class (K, D); NaN rows for a class without images."""
        out = np.full((len(self.class_names), self.features.shape[1]), np.nan, np.float32)
        for k in np.unique(self.labels):
            out[k] = self.features[self.labels == k].mean(axis=0)
        return out


def features_and_probs(model, x: np.ndarray, batch_size: int = 512):
    """(probabilities (N, K), features (N, D)) of a Keras model for images ``x`` (0-255)."""
    import keras
    import tensorflow as tf

    both = keras.Model(model.inputs, [model.output, model.get_layer(FEATURES_LAYER).input])

    @tf.function(reduce_retracing=True, autograph=False)
    def call(batch):
        return both(batch, training=False)

    probs, feats = [], []
    for i in range(0, len(x), batch_size):
        p, f = call(tf.constant(x[i : i + batch_size], tf.float32))
        probs.append(p.numpy())
        feats.append(f.numpy())
    if not probs:
        return np.zeros((0, model.output_shape[-1]), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(probs), np.concatenate(feats)


def training_features(
    loaded, dataset, n: int = TRAINING_SAMPLE, seed: int = 0, embed=None
) -> TrainingFeatures | None:
    """The features of up to ``n`` training images (a seeded sample, every class in
    proportion), with their ``embed`` embedding too when given
    (:func:`pipelines.models.imagenet.imagenet_embedding`); None when the dataset has no
    training images."""
    from pipelines.images.decode import stratified_sample

    rows = dataset.rows("train", classes=loaded.class_names)
    if rows.empty:
        return None
    labels = np.array([loaded.class_names.index(label) for label in rows["label"]])
    if len(rows) > n:
        rows = rows.iloc[np.sort(stratified_sample(labels, n, seed))]
    images = dataset.images(rows, loaded.input_size, loaded.class_names)
    probs, feats = features_and_probs(loaded.model, images.x)
    imagenet = None
    if embed is not None:
        size = (embed.input_px, embed.input_px)
        imagenet = embed(dataset.images(rows, size, loaded.class_names).x)
    return TrainingFeatures(feats, images.y, probs, list(loaded.class_names), imagenet)
