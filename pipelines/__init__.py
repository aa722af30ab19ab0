"""The ML steps and use cases as plain, typed, testable Python: no Prefect, no serving.

Rooms named for the loop, lowest first; a room imports only rooms below it:

- ``images``: decoding, the pixel contract, class names (TF-free; serving's ground too)
- ``models``: the Refit model file: save, load, safety inspection, rebuild, predict,
  evaluate (the one implementation of holdout metrics)
- ``loop``: features, prediction log, drift, monitor, label queue
- ``data``: submissions, ingest, validation and its rule catalogue, near-duplicates,
  examine, dataset, versions, intake, the embedded sample
- ``training``: fitting machinery, the fine-tune dispatcher, from-scratch training, the
  gentle recipe, imported models, architectures, head surgery
- ``judge``: gate and its statistics, fine-tune-and-judge, registry, figures, reports
- ``workspace``: the composition root, the objects the settings describe
"""
