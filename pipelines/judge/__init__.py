"""Judging: ``gate`` (the decision), ``figures`` (of an evaluation),
``candidate`` (fine-tune-and-judge, recorded once), ``registry`` (MLflow: runs, versions,
aliases, history), ``reports``."""
