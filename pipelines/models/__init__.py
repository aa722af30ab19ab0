"""The Refit model file: ``modelfile`` (save, load, cards), ``safety`` (inspection before
any loader runs), ``rebuild`` (Keras 2 files, flattening, the pixel-contract layer),
``predict`` (probabilities, accuracy, holdout metrics)."""
