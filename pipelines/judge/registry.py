"""The registry: MLflow tracking of candidate models, registry versions, aliases, history.

One MLflow experiment per registered model. A candidate's run records its parameters,
per-epoch curves, holdout metrics of challenger and champion, figures, the data-validation
report, the dataset version as an MLflow dataset input, tags (git sha, batch id, parent
version) and the gate decision; the Keras model is logged with the ``mlflow.keras`` flavour
and explicit ``pip_requirements`` (inferring them costs ~26 s per model), its class names
in the model metadata, and registered as a new version.

Aliases, never the deprecated stages: ``champion`` is what serves, ``previous`` what served
before it. An alias moves only after the version is fully registered, and every move is
appended to a promotion history kept as tags on the registered model (who, what, why,
when, metrics). Calls to the tracking server are retried with backoff; when it stays
down, :class:`RegistryUnavailable` says so and nothing moved.
"""

from __future__ import annotations

from pipelines.judge.registry_writes import RegistryWrites
from pipelines.loop.monitoring import MonitoringLog


class Registry(RegistryWrites, MonitoringLog):
    """Refit's view of one registered model in MLflow: the plumbing
    (``registry_client``), the read side (``registry_reads``), the write side and alias
    moves (``registry_writes``), and the monitoring experiment (``pipelines.loop.monitoring``)."""
