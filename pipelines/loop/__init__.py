"""The loop from production: ``features`` (embeddings), ``predlog`` (the prediction log),
``drift``, ``monitor`` (drift checks on the log) and ``monitoring`` (their MLflow
experiment), ``labelqueue`` (what to label next)."""
