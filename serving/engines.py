"""Inference engines: how a model turns a uint8 image batch into probabilities.

Every engine answers probabilities and the image's features (the input of the ``logits``
layer) from one call: the prediction log keeps both.

- ``OnnxEngine`` runs the model's frozen graph in ONNX Runtime, about 4x faster per call on
  these CPUs. The graph is built and checked against Keras when the version is registered
  (``pipelines.models.engine``, where the class lives); serving only loads it.
- :class:`KerasEngine` calls the model through one ``tf.function`` (never ``model.predict``
  per request: that costs ~80 ms of overhead per call): for versions whose ONNX file is
  missing, corrupt or disagrees with Keras, or when settings ask for it.
- :func:`best_engine` converts on load, for versions registered before engines were built.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pipelines.models.engine import OnnxEngine


class Engine(Protocol):
    name: str

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, K) and features (N, D) for uint8 images (N, H, W, 3)."""
        ...


CPU_LIMIT = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def inference_threads(wanted: int = 0, cpu_limit: Path = CPU_LIMIT) -> int:
    """Threads for one engine: ``wanted``, else the CPUs this process may use (its affinity,
    capped by a cgroup v2 CPU limit) when that is fewer than the machine's, else 0 (the
    libraries size their own pools). Without the cap, ONNX Runtime and TensorFlow size their
    pools to the whole machine, and replicas sharing it (or pods with CPU limits) fight."""
    if wanted > 0:
        return wanted
    usable = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_limit.read_text().split()
        if quota != "max":
            usable = min(usable, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return usable if usable < (os.cpu_count() or usable) else 0


def limit_tensorflow_threads(threads: int) -> None:
    """TensorFlow's intra-op pool to ``threads`` (0: its default; only possible before TF
    first runs)."""
    if threads <= 0:
        return
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # TF already ran here: its pool stays as it is
        tf.config.threading.set_intra_op_parallelism_threads(threads)


class KerasEngine:
    name = "keras"

    def __init__(self, model) -> None:
        import tensorflow as tf

        from pipelines.models.engine import with_features

        both = with_features(model)
        self._call = tf.function(
            lambda x: both(x, training=False), reduce_retracing=True, autograph=False
        )

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, features = self._call(images.astype(np.float32))
        return probs.numpy(), features.numpy()


@dataclass(frozen=True)
class EngineChoice:
    engine: Engine
    max_abs_diff: float | None  # ONNX vs Keras on the reference images; None if not tried
    note: str


def best_engine(
    model,
    reference: np.ndarray,
    preference: str = "auto",
    tolerance: float = 1e-5,
    threads: int = 0,
) -> EngineChoice:
    """Convert ``model`` here (a version registered before engines were built at
    registration): ONNX Runtime when it matches Keras within ``tolerance`` on ``reference``
    images, else Keras. ``preference``: auto, onnx (fail if it does not match) or keras."""
    from pipelines.models.engine import to_onnx

    keras_engine = KerasEngine(model)
    if preference == "keras":
        return EngineChoice(keras_engine, None, "Keras chosen in settings")
    try:
        onnx_engine = OnnxEngine(to_onnx(model), threads)
        diff = float(np.abs(onnx_engine(reference)[0] - keras_engine(reference)[0]).max())
    except Exception as exc:  # any export or runtime failure means: use Keras
        if preference == "onnx":
            raise
        return EngineChoice(keras_engine, None, f"ONNX export failed ({exc}); using Keras")
    if diff <= tolerance:
        return EngineChoice(onnx_engine, diff, f"ONNX Runtime (max diff {diff:.1e} vs Keras)")
    if preference == "onnx":
        raise ValueError(f"ONNX output differs from Keras by {diff:.1e} > {tolerance:.0e}")
    return EngineChoice(keras_engine, diff, f"ONNX differs by {diff:.1e}; using Keras")
