"""A paused training resumes exactly: the checkpoint's round trip, and what a bad checkpoint says."""

import pytest
import torch

from epochgraph.errors import EpochgraphError
from epochgraph.training.checkpoint import Checkpoint
from epochgraph.training.loop import train
from tests.test_training import _cfg


class PauseAt:
    """A hook that stops the training after ``epoch`` and keeps its checkpoint, as pausing does."""

    def __init__(self, epoch, path):
        self.epoch, self.path = epoch, path

    def on_epoch_end(self, state):
        if state.epoch == self.epoch:
            state.checkpoint().save(self.path)
            state.prune = True


def _no_time(history):
    return [{k: v for k, v in h.items() if not k.startswith("time/")} for h in history]


# momentum and dropout-free LeNet with SGD, Adam with a per-batch one-cycle schedule and augmentation: every
# state the checkpoint holds (momentum buffers, Adam's moments, the scheduler's step, the data generator) matters
@pytest.mark.parametrize("overrides", [
    ["optim.momentum=0.9"],
    ["optim=adam", "optim.lr=0.003", "optim.schedule.name=one_cycle", "optim.schedule.warmup_epochs=1",
     "data.augment=true"],
])
def test_paused_and_resumed_the_training_reaches_the_same_weights_as_one_that_never_stopped(overrides, tmp_path):
    cfg = _cfg("trainer.epochs=4", *overrides)
    whole = train(cfg)
    path = tmp_path / "ckpt.pt"
    paused = train(cfg, hooks=[PauseAt(2, path)])
    assert paused.pruned_at_epoch == 2 and paused.epochs_run == 2
    seen = []

    class Epochs:
        def on_epoch_end(self, state):
            seen.append(state.epoch)

    resumed = train(cfg, hooks=[Epochs()], resume=Checkpoint.load(path))
    assert seen == [3, 4]  # no epoch trained twice
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) <= 1e-6
    assert _no_time(resumed.history) == _no_time(whole.history)
    assert resumed.test_acc == whole.test_acc


def test_a_missing_or_corrupt_checkpoint_says_so_in_one_line(tmp_path):
    with pytest.raises(EpochgraphError, match=r"^checkpoint .*absent\.pt is missing$"):
        Checkpoint.load(tmp_path / "absent.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"cut short")
    with pytest.raises(EpochgraphError, match=r"^checkpoint .*bad\.pt is unreadable \(") as err:
        Checkpoint.load(bad)
    assert "\n" not in str(err.value)
    torch.save({"format": 1, "epoch": 2}, tmp_path / "partial.pt")
    with pytest.raises(EpochgraphError, match="is incomplete"):
        Checkpoint.load(tmp_path / "partial.pt")


def test_a_checkpoint_resumed_under_another_schedule_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    train(_cfg("trainer.epochs=3"), hooks=[PauseAt(1, path)])
    with pytest.raises(EpochgraphError, match="written without an LR schedule and the training resumed with one"):
        train(_cfg("trainer.epochs=3", "optim.schedule=cosine"), resume=Checkpoint.load(path))
