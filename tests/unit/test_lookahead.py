"""Lookahead weight averaging (bootstrap): when it starts, how strongly it averages."""

from __future__ import annotations

import keras
import numpy as np

from pipelines.training.fit import Lookahead


class FixedSchedule:
    """Stands in for the one-cycle schedule: only its progress matters here."""

    def __init__(self, progress: float) -> None:
        self.at = progress

    def progress(self) -> float:
        return self.at


def tiny_model() -> keras.Model:
    inputs = keras.Input((2,))
    return keras.Model(inputs, keras.layers.Dense(1)(inputs))


def set_all(model: keras.Model, value: float) -> None:
    model.set_weights([np.full(w.shape, value, "float32") for w in model.get_weights()])


def test_lookahead_waits_for_its_start_then_averages() -> None:
    model, schedule = tiny_model(), FixedSchedule(0.1)
    lookahead = Lookahead(schedule, every=1, start=0.3)
    lookahead.set_model(model)

    set_all(model, 1.0)
    lookahead.on_train_batch_end(0)  # before the start: nothing is averaged
    set_all(model, 5.0)
    lookahead.on_train_batch_end(1)
    assert all(np.all(w == 5.0) for w in model.get_weights())

    schedule.at = 0.5
    lookahead.on_train_batch_end(2)  # the first step after the start: the average begins here
    set_all(model, 9.0)
    lookahead.on_train_batch_end(3)
    decay = 0.95 * 0.5**3
    expected = 5.0 + (1 - decay) * (9.0 - 5.0)
    for weights in model.get_weights():
        np.testing.assert_allclose(weights, expected, rtol=1e-6)


def test_lookahead_averages_every_nth_step_only() -> None:
    model = tiny_model()
    lookahead = Lookahead(FixedSchedule(1.0), every=5, start=0.0)
    lookahead.set_model(model)
    set_all(model, 2.0)
    for step in range(5):
        lookahead.on_train_batch_end(step)  # the 5th step takes the first average
    set_all(model, 4.0)
    for step in range(4):
        lookahead.on_train_batch_end(step)  # steps 6-9: untouched
    assert all(np.all(w == 4.0) for w in model.get_weights())
    lookahead.on_train_batch_end(9)  # step 10: pulled back towards 2.0
    decay = 0.95**5
    for weights in model.get_weights():
        np.testing.assert_allclose(weights, 2.0 + (1 - decay) * 2.0, rtol=1e-6)
