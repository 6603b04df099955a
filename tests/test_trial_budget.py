"""``n_trials`` counts configurations across workers: two workers that ask for the last open slot at once do not
overshoot it (`pause.open_slots`, `pause.withdraw_surplus`, the sweeper and `epochgraph.optimize`)."""

from __future__ import annotations

import random
import threading
import time

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import epochgraph
from epochgraph.search import pause
from epochgraph.search.trial_attrs import PAUSED_ATTR, RESUMED_FROM_ATTR, WITHDRAWN_ATTR
from tests.pausing import dashboard_note

DIST = {"x": FloatDistribution(0, 1)}


def _study(tmp_path, *states: TrialState) -> optuna.Study:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    for i, state in enumerate(states):
        study.add_trial(create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                                     params={"x": i / 10}, distributions=DIST))
    return study


def test_of_two_workers_asking_for_the_last_slot_at_once_the_later_ask_stands_down(tmp_path):
    study = _study(tmp_path, TrialState.COMPLETE, TrialState.PRUNED)
    assert pause.open_slots(study, 3) == 1  # both workers see one open slot ...
    first, second = study.ask(DIST), study.ask(DIST)  # ... and each asks a trial before either checks
    # whichever checks first, the trial the storage created later is the one beyond the budget
    assert pause.withdraw_surplus(study, second, 3) is True
    assert pause.withdraw_surplus(study, first, 3) is False
    withdrawn = study._storage.get_trial(second._trial_id)
    assert withdrawn.state == TrialState.FAIL and withdrawn.system_attrs[WITHDRAWN_ATTR] is True
    assert "**Withdrawn**, never trained: 3 configurations were asked" in dashboard_note(study, second._trial_id)
    assert [t.number for t in pause.configurations(study)] == [0, 1, first.number]
    assert pause.open_slots(study, 3) == 0  # the first one runs: the budget is taken


def test_a_trial_within_the_budget_is_kept_and_a_failed_trial_frees_its_slot(tmp_path):
    study = _study(tmp_path, TrialState.COMPLETE, TrialState.FAIL)
    trial = study.ask(DIST)
    assert pause.withdraw_surplus(study, trial, 2) is False  # the failed trial holds no slot
    assert study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING
    assert pause.withdraw_surplus(study, study.ask(DIST), 2) is True


def test_a_paused_and_resumed_configuration_counts_once_and_a_requeued_trial_is_never_withdrawn(tmp_path):
    study = _study(tmp_path, TrialState.COMPLETE)
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": 0.5}, distributions=DIST,
                                 intermediate_values={1: 0.3}, system_attrs={PAUSED_ATTR: 1}))
    resumed = pause.resume(study, study.trials[1])
    assert study._storage.get_trial(resumed._trial_id).user_attrs[RESUMED_FROM_ATTR] == 1
    # trials 0 and 1 (and 2, which goes on from 1): two configurations asked, so a third fits a budget of 3
    assert pause.open_slots(study, 3) == 1
    assert pause.withdraw_surplus(study, study.ask(DIST), 3) is False
    # a trial re-queued after a failure (Optuna's retry callback: WAITING, system attr failed_trial) is that
    # configuration again, whatever the count
    study.enqueue_trial({"x": 0.9})
    requeued = study.ask(DIST)
    study._storage.set_trial_system_attr(requeued._trial_id, "failed_trial", 0)
    assert pause.withdraw_surplus(study, requeued, 1) is False


def test_two_workers_of_a_plain_objective_finish_exactly_n_trials_configurations(tmp_path):
    # two threads, each a worker on the same SQLite study, trials of uneven length: each worker stops asking
    # when the trials running on the other one take what is left of the budget
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="two", storage=url)
    errors: list[BaseException] = []

    def objective(trial):
        x = trial.suggest_float("x", -1, 1)
        time.sleep(random.Random(trial.number).uniform(0.05, 0.3))
        return x * x

    def worker():
        try:
            epochgraph.optimize(optuna.load_study(study_name="two", storage=url), objective, n_trials=7)
        except BaseException as err:  # noqa: BLE001 (reported by the test below)
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads)
    study = optuna.load_study(study_name="two", storage=url)
    trials = study.get_trials()
    assert [t.state for t in pause.configurations(study)] == [TrialState.COMPLETE] * 7, \
        [(t.number, t.state.name) for t in trials]
    assert all(WITHDRAWN_ATTR in t.system_attrs for t in trials if t.state == TrialState.FAIL)


def test_a_dead_workers_trial_is_failed_once_stale_and_a_live_one_beats(tmp_path):
    # a storage with heartbeats: a trial left RUNNING by a worker that died holds no slot once its heartbeat is
    # older than grace_period; a trial epochgraph.optimize runs beats, so a stale check during its run spares it
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1,
                                         grace_period=4)
    study = optuna.create_study(storage=storage)
    zombie = study.ask(DIST)
    storage.record_heartbeat(zombie._trial_id)
    time.sleep(4.5)
    alive: list[bool] = []

    def objective(trial):
        if not alive:
            time.sleep(4.5)  # longer than grace_period (beats every 1 s: 3 s to spare on a busy machine)
            optuna.storages.fail_stale_trials(study)
            alive.append(study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING)
        return trial.suggest_float("x", 0, 1)

    epochgraph.optimize(study, objective, n_trials=2)
    assert study._storage.get_trial(zombie._trial_id).state == TrialState.FAIL
    assert alive == [True]
    assert [t.state for t in pause.configurations(study)] == [TrialState.FAIL, TrialState.COMPLETE,
                                                             TrialState.COMPLETE]
