"""The registry contract: what a registered version carries, written once for the code that
writes it (``pipelines.judge.registry``) and the code that serves it (``serving.champion``).

Aliases only, never stages: ``champion`` serves, ``previous`` served before it.
"""

from __future__ import annotations

CHAMPION, PREVIOUS = "champion", "previous"

# Artifacts of a version's run.
MODEL_FILE_DIR, MODEL_FILE_NAME = "file", "model.keras"
MODEL_FILE_ARTIFACT = f"{MODEL_FILE_DIR}/{MODEL_FILE_NAME}"  # the Refit model file
REFERENCE_DIR, REFERENCE_NAME = "reference", "images.npy"
REFERENCE_ARTIFACT = f"{REFERENCE_DIR}/{REFERENCE_NAME}"  # holdout images, uint8 (N, H, W, 3)
# The serving engine built at registration (``pipelines.models.engine``): the ONNX file, its
# check against Keras (JSON: max_abs_diff, images, sha256; or error) and Keras' probabilities
# on the reference images (float32 (N, K)).
ENGINE_DIR = "engine"
ONNX_ARTIFACT = f"{ENGINE_DIR}/model.onnx"
ENGINE_CHECK_ARTIFACT = f"{ENGINE_DIR}/check.json"
EXPECTED_ARTIFACT = f"{ENGINE_DIR}/expected.npy"
FLIPS_ARTIFACT = "evaluation/negative_flips.png"  # the gate's negative flips, a thumbnail grid
# The version's view of its training images (features, labels, probabilities): what drift
# and the label queue compare live images with.
TRAINING_FEATURES_ARTIFACT = f"{REFERENCE_DIR}/training-features.npz"
# An image's features are the input of this layer (the last before the probabilities).
FEATURES_LAYER = "logits"

# Tags of a version (and its run).
CLASS_NAMES_TAG = "class_names"  # JSON list, in output order
DATASET_VERSION_TAG = "dataset_version"
GATE_TAG = "gate"  # passed / failed / inconclusive
PARENT_TAG = "parent_version"
JUDGED_AGAINST_TAG = "gate.champion"  # the champion version the gate compared it with, or none
OWNER_TAG = "refit.owner"  # host:pid of the process that logged it (ends abandoned runs)
SUBMISSION_TAG = "submission"  # the retrain submission it was trained for
IMPORTED_TAG = "imported_from"  # the user's file a model descends from (absent: Refit's own)
PIXELS_TAG = "pixels"  # the input contract wrapped into an imported model

# Metrics of a version's run: the challenger's holdout metrics carry this prefix.
CHALLENGER_PREFIX = "challenger."

# Tags of the registered model: the promotion history, one JSON entry per alias move, and
# the intent of a move under way (so a reader can complete or undo one a crash cut short).
HISTORY_PREFIX = "history."
PENDING_MOVE_TAG = "promotion.pending"
# Tag of a blessed version that was not promoted, and why (the champion moved meanwhile).
NOT_PROMOTED_TAG = "gate.not_promoted"
# Tags of a version that waits for a person (``gate.approval``): pending / approved /
# rejected / timed-out, since when (epoch seconds), and who decided, why and when (JSON).
APPROVAL_TAG = "approval"
APPROVAL_SINCE_TAG = "approval.requested_at"
APPROVAL_DECIDED_TAG = "approval.decided"


def alias_version(client, model_name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None (also when the model does not exist yet).

    ``client`` is an ``mlflow.MlflowClient``; read aliases from the registered model, as
    ``search_model_versions`` leaves them empty.
    """
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_registered_model(model_name).aliases.get(alias)
    except MlflowException as exc:
        missing = "RESOURCE_DOES_NOT_EXIST"
        if getattr(exc, "error_code", "") == missing or missing in str(exc):
            return None
        raise
    return None if found is None else str(found)


def training_features(client, name: str, version: str, tracking_uri: str) -> bytes | None:
    """The training features logged with a version (``pipelines.loop.features.TrainingFeatures``
    bytes), or None for a version registered before Refit kept them."""
    import tempfile
    from pathlib import Path

    import mlflow.artifacts

    run_id = client.get_model_version(name, version).run_id
    if TRAINING_FEATURES_ARTIFACT not in {
        a.path for a in client.list_artifacts(run_id, REFERENCE_DIR)
    }:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path=TRAINING_FEATURES_ARTIFACT,
            dst_path=tmp,
            tracking_uri=tracking_uri,
        )
        return Path(path).read_bytes()


def holdout_accuracy(client, name: str, version: str) -> float | None:
    """The holdout accuracy the gate measured for a version (None if it logged none)."""
    run_id = client.get_model_version(name, version).run_id
    return client.get_run(run_id).data.metrics.get(f"{CHALLENGER_PREFIX}accuracy")
