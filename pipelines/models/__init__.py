"""The Refit model file: ``modelfile`` (save, load, cards), ``safety`` (inspection before
any loader runs), ``rebuild`` (Keras 2 files, flattening, the pixel-contract layer),
``predict`` (probabilities, accuracy), ``evaluate`` (holdout metrics, computed once for
the gate, model cards and the DVC stage)."""
