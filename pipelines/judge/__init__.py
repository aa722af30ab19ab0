"""Judging: ``evaluate`` (both models on one holdout), ``gate`` (the decision),
``candidate`` (fine-tune-and-judge, recorded once), ``registry`` (MLflow: runs, versions,
aliases, history), ``reports``."""
