"""The few things epochgraph needs from Optuna that Optuna has no public API for, in one place.

A sweep's job reconnects to a trial the sweeper asked (``optuna.trial.Trial(study, trial_id)`` takes the
storage's trial id, which a study gives only privately), keeps the trial's heartbeat beating while it
trains (Optuna beats only inside ``study.optimize``), and the sweeper reads how long ago each running
trial last beat, to say how long it will wait for a dead worker. Optuna's own private names are read
here and nowhere else; the versions this is tested against are bounded in ``pyproject.toml``
(``tests/test_optuna_internals.py`` checks each function against a real storage).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["frozen_trial", "heartbeat", "heartbeat_ages", "live_system_attrs", "live_user_attrs", "rdb_storage",
           "set_system_attr", "stale_trial_callback", "trial_id"]


def trial_id(study: optuna.Study, number: int) -> int:
    """The storage's id of trial ``number`` of ``study`` (what ``optuna.trial.Trial`` takes)."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(number))


def set_system_attr(trial: Any, key: str, value: Any) -> bool:
    """Set a system attr of a running trial through its storage (``Trial.set_system_attr`` is gone in Optuna
    5; the storage's method is public, the trial's id is not). False for a trial without a storage
    (``optuna.trial.FixedTrial``)."""
    storage, number = getattr(trial, "storage", None), getattr(trial, "_trial_id", None)
    if storage is None or number is None:
        return False
    storage.set_trial_system_attr(number, key, value)
    return True


def live_system_attrs(trial: Any) -> dict[str, Any]:
    """The system attrs of a running trial as its storage holds them ({} for a trial without a storage)."""
    storage, number = getattr(trial, "storage", None), getattr(trial, "_trial_id", None)
    if storage is None or number is None:
        return {}
    return dict(storage.get_trial_system_attrs(number))


def live_user_attrs(trial: Any) -> dict[str, Any]:
    """The user attrs of a running trial as its storage holds them now (a pruner writes them there; the trial's
    own ``user_attrs`` is a copy cached when it was made); {} for a trial without a storage."""
    storage, number = getattr(trial, "storage", None), getattr(trial, "_trial_id", None)
    if storage is None or number is None:
        return {}
    return dict(storage.get_trial_user_attrs(number))


def frozen_trial(study: optuna.Study, trial: optuna.trial.Trial) -> FrozenTrial:
    """The trial as the storage holds it now (its state may have been set by another process)."""
    return study._storage.get_trial(trial._trial_id)


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.trial.Trial) -> Iterator[None]:
    """Keep ``trial``'s heartbeat beating while the block runs (a no-op without ``heartbeat_interval``)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield


def rdb_storage(study: optuna.Study) -> Any:
    """The study's storage backend (Optuna wraps an `RDBStorage` in a cache)."""
    return getattr(study._storage, "_backend", study._storage)


def stale_trial_callback(study: optuna.Study) -> Any:
    """The storage's callback for a failed stale trial (`RetryFailedTrialCallback`: re-queue it), or None."""
    storage = study._storage
    for getter in ("get_heartbeat_stale_trial_callback", "get_failed_trial_callback"):  # Optuna 5, 4
        if hasattr(storage, getter):
            return getattr(storage, getter)()
    return None


def heartbeat_ages(study: optuna.Study) -> dict[int, float]:
    """Seconds since the last heartbeat of each RUNNING trial (trial number -> age); empty when unknown."""
    storage = rdb_storage(study)
    try:
        import sqlalchemy
        from optuna.storages._rdb import models

        with storage.scoped_session() as session:
            now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
            rows = (session.query(models.TrialModel.number, models.TrialHeartbeatModel.heartbeat)
                    .join(models.TrialHeartbeatModel, models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
                    .filter(models.TrialModel.study_id == study._study_id,
                            models.TrialModel.state == TrialState.RUNNING).all())
        return {int(number): (now - beat.replace(tzinfo=None)).total_seconds() for number, beat in rows}
    except Exception:  # another storage, or Optuna's tables changed: the message goes without the ages
        return {}
