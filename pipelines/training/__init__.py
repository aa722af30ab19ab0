"""Training: ``fit`` (the machinery every recipe shares), ``finetune`` (the dispatcher and
Refit's recipe), ``gentle`` (imported models' recipe), ``scratch`` (a new model from
scratch), ``imports`` (users' model files), ``architectures``, ``surgery`` (growing the head)."""
