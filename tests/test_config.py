"""attnlib.config: a TrainConfig is checked when it is made (every wrong value: tests/test_bad_inputs.py)."""
from __future__ import annotations

import pytest

from attnlib.config import TrainConfig


@pytest.mark.parametrize("changes", [
    dict(optimizer="rmsprop"), dict(schedule="step"), dict(amp="fp8"), dict(epochs=0), dict(epochs=-1),
    dict(batch_size=0), dict(eval_batch_size=0), dict(check_every=0), dict(lr=0.0),
])
def test_config_validation(changes):
    with pytest.raises(ValueError):
        TrainConfig(**changes)
    with pytest.raises(ValueError):
        TrainConfig().replace(**changes)


def test_config_replace():
    base = TrainConfig()
    changed = base.replace(epochs=3, lr=0.5)
    assert (changed.epochs, changed.lr, base.epochs, base.lr) == (3, 0.5, 10, 0.1)
    assert changed.replace() == changed
    with pytest.raises(ValueError, match="learning_rate"):
        base.replace(learning_rate=0.1)
    assert TrainConfig(milestones=[0.3]).milestones == (0.3,)
