import math

import pytest
import torch
from omegaconf import OmegaConf

from epochgraph.errors import EpochgraphError
from epochgraph.training.loop import train
from tests.conftest import TINY, compose_train


def _cfg(*overrides):
    return OmegaConf.to_container(compose_train([*TINY, *overrides]), resolve=True)


def test_same_seed_gives_identical_weights_and_other_seed_does_not():
    a = train(_cfg("trainer.epochs=1"))
    b = train(_cfg("trainer.epochs=1"))
    c = train(_cfg("trainer.epochs=1", "seed=1"))
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    def no_time(history):
        return [{k: v for k, v in h.items() if not k.startswith("time/")} for h in history]

    assert no_time(a.history) == no_time(b.history)


def test_training_learns_and_calls_hooks_every_epoch():
    seen = []

    class Hook:
        def on_epoch_end(self, state):
            seen.append((state.epoch, dict(state.metrics)))

    result = train(_cfg("trainer.epochs=3", "data.train_size=1000", "optim.lr=0.05"), hooks=[Hook()])
    assert [e for e, _ in seen] == [1, 2, 3]
    assert seen[-1][1]["train_loss"] < seen[0][1]["train_loss"]
    assert result.test_acc > 0.3  # 10 classes: chance is 0.1
    assert set(seen[0][1]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "time/epoch_s"}


def test_diverging_run_stops_cleanly_and_is_flagged():
    states = []

    class Hook:
        def on_epoch_end(self, state):
            states.append(state)

    result = train(_cfg("optim.lr=1e6", "trainer.epochs=4"), hooks=[Hook()])
    assert result.diverged
    assert result.epochs_run < 4
    assert states[-1].diverged and states[-1].tags["diverged"] == "true"
    assert states[-1].metrics["diverged"] == 1.0 and math.isnan(states[-1].metrics["train_loss"])


@pytest.mark.parametrize("override, match", [
    ("optim.lr=-0.1", "optim.lr=-0.1 must be a positive number"),
    ("optim.name=rmsprop", "unknown optimizer 'rmsprop'"),
    ("trainer.epochs=0", "trainer.epochs=0 must be a positive integer"),
    ("model.name=foo", "unknown model 'foo'"),
])
def test_bad_config_values_raise_one_clear_error(override, match):
    with pytest.raises(EpochgraphError, match=match):
        train(_cfg(override))


def test_data_seed_draws_the_subsets_and_the_seed_the_rest():
    from epochgraph.training.loop import check_config

    base = check_config(_cfg())  # seed=0 draws the data too
    same_data = check_config(_cfg("+data.seed=0", "seed=7"))
    other_data = check_config(_cfg("+data.seed=3"))
    assert torch.equal(base.x_train, same_data.x_train) and torch.equal(base.y_val, same_data.y_val)
    assert not torch.equal(base.x_train, other_data.x_train)
    result = train(_cfg("+data.seed=3", "trainer.epochs=1"))
    assert result.epochs_run == 1
