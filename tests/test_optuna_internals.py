"""The private Optuna names epochgraph reads, each checked against a real SQLite storage, so that an Optuna
release that moves them fails here, in one place (the versions are bounded in pyproject.toml)."""

import time

import optuna
import pytest
from optuna.trial import TrialState

from epochgraph.store import optuna_internals
from epochgraph.store.storage import make_storage


@pytest.fixture
def study(tmp_path):
    storage = make_storage({"url": f"sqlite:///{tmp_path / 'optuna.db'}", "heartbeat_interval": 1,
                            "grace_period": 3, "max_retry": 1})
    return optuna.create_study(study_name="internals", storage=storage, direction="maximize")


def test_a_trial_is_found_by_number_and_read_as_the_storage_holds_it(study):
    first, second = study.ask(), study.ask()
    assert optuna_internals.trial_id(study, second.number) != optuna_internals.trial_id(study, first.number)
    again = optuna.trial.Trial(study, optuna_internals.trial_id(study, second.number))
    again.report(0.5, 1)
    study.tell(second.number, state=TrialState.PRUNED)
    frozen = optuna_internals.frozen_trial(study, again)
    assert frozen.number == second.number and frozen.state == TrialState.PRUNED
    assert frozen.intermediate_values == {1: 0.5}


def test_the_heartbeat_beats_while_the_block_runs_and_its_age_is_read(study):
    trial = study.ask()
    with optuna_internals.heartbeat(study, trial):
        deadline = time.time() + 120
        while trial.number not in optuna_internals.heartbeat_ages(study):
            assert time.time() < deadline, "no heartbeat recorded"
            time.sleep(0.2)
    age = optuna_internals.heartbeat_ages(study)[trial.number]
    assert 0 <= age < 120
    study.tell(trial, 1.0)
    assert optuna_internals.heartbeat_ages(study) == {}  # only RUNNING trials have an age


def test_the_storage_and_its_retry_callback_are_found(study):
    assert isinstance(optuna_internals.rdb_storage(study), optuna.storages.RDBStorage)
    retry = optuna_internals.stale_trial_callback(study)
    assert isinstance(retry, optuna.storages.RetryFailedTrialCallback)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(trial, state=TrialState.FAIL)
    retry(study, optuna_internals.frozen_trial(study, trial))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]


def test_a_storage_without_heartbeats_has_no_retry_callback(tmp_path):
    study = optuna.create_study(storage=make_storage({"url": f"sqlite:///{tmp_path / 'plain.db'}"}))
    assert optuna_internals.stale_trial_callback(study) is None
    assert optuna_internals.heartbeat_ages(study) == {}


def test_a_running_trials_attrs_are_read_as_its_storage_holds_them_not_as_cached(study):
    trial = study.ask()
    # another process (a pruner) writes through the storage; the trial object's own view is a cached copy
    study._storage.set_trial_user_attr(trial._trial_id, "forecast_decision", "pruned: P 0.01 < δ 0.05")
    study._storage.set_trial_system_attr(trial._trial_id, "paused_at_epoch", 2)
    assert "forecast_decision" not in trial.user_attrs
    assert optuna_internals.live_user_attrs(trial)["forecast_decision"] == "pruned: P 0.01 < δ 0.05"
    assert optuna_internals.live_system_attrs(trial)["paused_at_epoch"] == 2
    assert optuna_internals.live_user_attrs(optuna.trial.FixedTrial({})) == {}  # no storage: nothing
