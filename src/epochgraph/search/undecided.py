"""What a pruner does when its model cannot be fitted or asked: it keeps the trial, and says so.

A pruner runs inside ``trial.should_prune()``, in the user's objective or a sweep's job: an exception raised
there kills the trial and, in ``study.optimize``, the whole study. A forecast that cannot be made (too few
usable rows, a column scikit-learn cannot bin, a numerical failure) is not a reason to stop anybody's
training, so the pruner keeps the trial (`undecided`), logs one warning line per study naming the cause and
the epoch, and records in the trial that it did not decide at that epoch (system attr
``forecast_undecided_NNN``, the cause), where a user, optuna-dashboard or a later analysis finds it.
Errors in the pruner's own arguments still raise, at construction.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from epochgraph.search.trial_attrs import UNDECIDED_ATTR

log = logging.getLogger("epochgraph")


def cause_of(err: BaseException) -> str:
    """The error as one line: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def undecided(pruner: Any, study: optuna.Study, trial: FrozenTrial, err: Exception) -> None:
    """Keep ``trial``: record in it that ``pruner`` did not decide at its last epoch, and why; warn once per
    study (the pruner's ``_warned``: the studies it has warned about)."""
    epoch = int(trial.last_step or 0)
    cause = cause_of(err)
    try:
        study._storage.set_trial_system_attr(trial._trial_id, UNDECIDED_ATTR.format(epoch), cause)
    except Exception as store_err:  # a trial the storage no longer takes (finished elsewhere): the log says it
        log.debug(f"could not record the undecided forecast in trial {trial.number}: {store_err}")
    warned: set[Any] = pruner.__dict__.setdefault("_warned", set())
    key = (id(study._storage), study._study_id)
    if key not in warned:
        warned.add(key)
        log.warning(f"{type(pruner).__name__}: no forecast at epoch {epoch} of trial {trial.number} ({cause}); "
                    f"the trial is kept and the study goes on (said once per study; each undecided epoch is "
                    f"recorded in its trial as {UNDECIDED_ATTR.format(epoch)!r})")
