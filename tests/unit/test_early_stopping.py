"""Early stopping of bootstrap: it ignores the noisy first half of the one-cycle schedule."""

from __future__ import annotations

import keras

from pipelines.training.fit import early_stopping


def epochs_until_stop(epochs: int, patience: int, val_accuracy: list[float]) -> int | None:
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    callback = early_stopping(epochs, patience)
    callback.set_model(model)
    model.stop_training = False
    callback.on_train_begin()
    for epoch, accuracy in enumerate(val_accuracy):
        callback.on_epoch_end(epoch, {"val_accuracy": accuracy})
        if model.stop_training:
            return epoch + 1
    return None


def test_an_early_peak_at_high_learning_rate_does_not_stop_the_run() -> None:
    # the 48-epoch run that stopped at epoch 17: best validation accuracy at epoch 5
    early_peak = [0.55, 0.65, 0.72, 0.72, 0.75] + [0.70] * 19
    assert epochs_until_stop(48, 12, early_peak) is None


def test_it_still_stops_a_second_half_that_no_longer_improves() -> None:
    stalled = [0.5 + 0.01 * e for e in range(30)] + [0.6] * 18
    assert epochs_until_stop(48, 12, stalled) == 30 + 12  # best at epoch 30
