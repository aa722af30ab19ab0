"""Judging: ``gate`` (the decision) and ``stats`` (its paired tests and bounds),
``candidate`` (fine-tune-and-judge: ``challenge``, then ``judge_challenge``; a model file
judged whole), ``registry`` (MLflow: ``registry_client`` the plumbing, ``registry_reads``
the read side, ``registry_writes`` runs, versions and the alias-move protocol), ``figures``
(of an evaluation), ``reports`` (for people)."""
