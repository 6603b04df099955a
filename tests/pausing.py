"""Pruners on a fixed plan, for testing the pause, resume and retry machinery apart from any forecast."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from epochgraph.search.pause import configurations  # noqa: F401 (the tests' name for it)
from epochgraph.search.trial_attrs import RESUMED_FROM_ATTR, mark_paused


class PauseOdd(optuna.pruners.BasePruner):
    """Pauses every odd-numbered trial (even: ``parity=0``) that is not a resumption after epoch ``at``; a paused
    trial should resume once ``after`` trials completed. Writes its pauses into the trial, as `ForecastPruner` does."""

    pause = True

    def __init__(self, at: int = 1, after: int = 1, parity: int = 1) -> None:
        self.at, self.after, self.parity = int(at), int(after), int(parity)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if trial.number % 2 == self.parity and trial.last_step == self.at and RESUMED_FROM_ATTR not in trial.user_attrs:
            mark_paused(study, trial, self.at)
            return True
        return False

    def should_resume(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, last_pass: bool = False) -> bool:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= self.after


class PruneRetries(optuna.pruners.BasePruner):
    """Prunes a trial that Optuna's retry callback re-queued (system attr ``failed_trial``) after its first epoch:
    a test that kills a long trial to see it retried needs the retry to run in a new job, not to run long."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return "failed_trial" in trial.system_attrs and (trial.last_step or 0) >= 1


class PauseThenStopRetries(optuna.pruners.BasePruner):
    """Pauses every fresh trial after epoch ``at`` and resumes it at once; a trial Optuna's retry callback
    re-queued (system attr ``failed_trial``) is stopped for good one epoch after the checkpoint it resumed from.
    A test that kills a resumed trial sees its retry go on from the same checkpoint, without training long."""

    pause = True

    def __init__(self, at: int = 1) -> None:
        self.at = int(at)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if "failed_trial" in trial.system_attrs:
            return (trial.last_step or 0) > self.at
        if RESUMED_FROM_ATTR not in trial.user_attrs and trial.last_step == self.at:
            mark_paused(study, trial, self.at)
            return True
        return False

    def should_resume(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, last_pass: bool = False) -> bool:
        return True


def run_state(trial: optuna.trial.FrozenTrial) -> str:
    """The ``state`` tag the trial's MLflow run carries: PAUSED for a paused trial, else Optuna's state."""
    from epochgraph.search.trial_attrs import paused_epoch

    return "PAUSED" if paused_epoch(trial) is not None else trial.state.name


def dashboard_note(study: optuna.Study, trial_id: int) -> str:
    """The optuna-dashboard note of the trial ``trial_id`` (as the dashboard reads it from the study)."""
    from optuna_dashboard._note import get_note_from_system_attrs

    return get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), trial_id)["body"]
