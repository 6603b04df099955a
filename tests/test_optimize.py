"""`epochgraph.optimize` with your own objective: paused trials resume from what `report_epoch` was given."""

from __future__ import annotations

import logging
import math
from collections import Counter

import optuna
import pytest
import torch
from torch import nn

import epochgraph
from epochgraph.search.trial_attrs import CHECKPOINT_ATTR, RESUMED_FROM_ATTR
from tests.pausing import PauseOdd

EPOCHS = 4
S = optuna.trial.TrialState


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 8, 8, generator=g)
    return x, (x.mean(dim=(1, 2, 3)) > 0).long()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def make_objective(trained: Counter, finals: dict):
    """A plain objective, written as the module docstring of `epochgraph.search.optimize` says."""
    x, y = _data()

    def objective(trial):
        lr = trial.suggest_float("lr", 0.01, 0.5, log=True)
        torch.manual_seed(trial.suggest_int("seed", 0, 1000))
        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        state, first = epochgraph.resume_state(trial), 1
        if state is not None:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            first = state["epoch"] + 1
        for epoch in range(first, EPOCHS + 1):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 32):
                idx = perm[i:i + 32]
                opt.zero_grad()
                nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
            trained[(lr, trial.params["seed"])] += 1
            acc = float((net(x).argmax(1) == y).float().mean())
            ckpt = {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                    "rng": torch.get_rng_state()}
            epochgraph.report_epoch(trial, epoch, val_acc=acc, model=net, checkpoint=ckpt)
            if trial.should_prune():
                raise optuna.TrialPruned()
        finals[(lr, trial.params["seed"])] = {k: v.clone() for k, v in net.state_dict().items()}
        return acc

    return objective


def test_paused_trials_of_a_plain_objective_resume_from_their_checkpoint_to_the_same_weights(tmp_path):
    trained, finals = Counter(), {}
    study = optuna.create_study(direction="maximize", pruner=PauseOdd(at=2, after=2),
                                sampler=optuna.samplers.RandomSampler(0))
    epochgraph.optimize(study, make_objective(trained, finals), n_trials=5, checkpoint_dir=tmp_path / "ckpt")
    states = [t.state for t in study.trials]
    # 0 C, 1 paused at 2, 2 C; then (2 completed) 1 resumes as 3 before a new trial is asked; 4 C; 5 paused at 2
    # fills the budget of 5 configurations, and the last pass resumes it as 6
    assert states == [S.COMPLETE, S.PRUNED, S.COMPLETE, S.COMPLETE, S.COMPLETE, S.PRUNED, S.COMPLETE]
    assert study.trials[3].user_attrs[RESUMED_FROM_ATTR] == 1 and study.trials[6].user_attrs[RESUMED_FROM_ATTR] == 5
    assert study.trials[3].params == study.trials[1].params
    complete = [t for t in study.trials if t.state == S.COMPLETE]
    assert all(sorted(t.intermediate_values) == list(range(1, EPOCHS + 1)) for t in complete)
    # every configuration trained each of its epochs exactly once, and no checkpoint is left behind
    assert list(trained.values()) == [EPOCHS] * 5
    assert not list((tmp_path / "ckpt").rglob("*.pt"))
    # the resumed trainings end at the weights of the same training run without a pause
    paused = study.trials[1].params
    again, again_finals = Counter(), {}
    plain = optuna.create_study(direction="maximize")
    plain.enqueue_trial(paused)
    plain.optimize(make_objective(again, again_finals), n_trials=1)
    key = (paused["lr"], paused["seed"])
    for k, v in again_finals[key].items():
        torch.testing.assert_close(finals[key][k], v, atol=1e-6, rtol=0)


def test_a_missing_checkpoint_trains_the_trial_from_scratch_with_one_warning(tmp_path, caplog):
    trained, finals = Counter(), {}
    study = optuna.create_study(direction="maximize", pruner=PauseOdd(at=2, after=99),
                                sampler=optuna.samplers.RandomSampler(0))
    epochgraph.optimize(study, make_objective(trained, finals), n_trials=2, checkpoint_dir=tmp_path)
    paused = study.trials[1]
    assert paused.state == S.PRUNED and paused.system_attrs["paused_at_epoch"] == 2
    (tmp_path / "ckpt.pt").write_bytes(b"")
    path = paused.system_attrs[CHECKPOINT_ATTR]
    assert path.endswith("trial_000001_epoch_002.pt")
    import pathlib

    pathlib.Path(path).unlink()
    study.pruner.after = 0  # now it should resume
    with caplog.at_level(logging.WARNING, logger="epochgraph"):
        epochgraph.optimize(study, make_objective(trained, finals), n_trials=2, checkpoint_dir=tmp_path)
    said = [r.getMessage() for r in caplog.records if "trains from scratch" in r.getMessage()]
    assert len(said) == 1 and "missing" in said[0]
    assert study.trials[2].state == S.COMPLETE and study.trials[2].user_attrs[RESUMED_FROM_ATTR] == 1
    assert trained[(paused.params["lr"], paused.params["seed"])] == 2 + EPOCHS  # from scratch: every epoch again


def test_without_a_checkpoint_a_pause_is_a_prune_for_good_said_once(caplog):
    def objective(trial):
        trial.suggest_float("x", 0, 1)
        for epoch in (1, 2, 3):
            epochgraph.report_epoch(trial, epoch, val_acc=0.5)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 0.5

    study = optuna.create_study(direction="maximize", pruner=PauseOdd(at=2, after=0))
    with caplog.at_level(logging.WARNING, logger="epochgraph"):
        epochgraph.optimize(study, objective, n_trials=4)
    assert [t.state for t in study.trials] == [S.COMPLETE, S.PRUNED, S.COMPLETE, S.PRUNED]
    assert all(t.system_attrs.get("paused_at_epoch") is None for t in study.trials)
    assert sum("gave report_epoch no checkpoint=" in r.getMessage() for r in caplog.records) == 1


def test_the_forecast_pruner_pauses_and_resumes_a_plain_study_training_each_epoch_once(tmp_path):
    trained = Counter()

    def objective(trial):
        rate = trial.suggest_float("rate", 0.05, 1.0)
        state = epochgraph.resume_state(trial)
        first = 1 if state is None else state["epoch"] + 1
        for epoch in range(first, 13):
            trained[rate] += 1
            acc = 0.9 * (1 - math.exp(-rate * epoch))
            epochgraph.report_epoch(trial, epoch, val_acc=acc, checkpoint={"epoch": epoch})
            if trial.should_prune():
                raise optuna.TrialPruned()
        return acc

    pruner = epochgraph.ForecastPruner(max_epoch=12, pause=True, warm_start=None, min_trials=3)
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(1))
    epochgraph.optimize(study, objective, n_trials=12, checkpoint_dir=tmp_path)
    finished = [t for t in study.trials if t.state in (S.COMPLETE, S.PRUNED)]
    resumed = [t for t in study.trials if RESUMED_FROM_ATTR in t.user_attrs]
    assert len(finished) - len(resumed) == 12 and max(trained.values()) <= 12  # no epoch trained twice
    best = max(trained, key=lambda r: 0.9 * (1 - math.exp(-r * 12)))
    assert study.best_trial.params["rate"] == pytest.approx(best)  # the best configuration completed
