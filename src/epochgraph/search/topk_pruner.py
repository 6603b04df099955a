"""`TopKPruner`: train every trial a few epochs, continue only the best few so far.

The simplest strong baseline of the learning-curve literature (Egele et al. 2024, "Is one epoch all you
need?", arXiv 2404.04111): after ``epoch`` epochs, a trial continues only when its value is among the
``k`` best values any trial of the study had at that epoch; every trial is otherwise pruned there.
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial


class TopKPruner(BasePruner):
    """Prune a trial at ``epoch`` unless its value there ranks among the ``k`` best of the study so far.

    Every trial that reached ``epoch`` counts (completed, pruned and running ones), so the first ``k``
    trials always continue. Nothing is decided at other epochs.

    Example::

        study = optuna.create_study(direction="maximize", pruner=TopKPruner(epoch=1, k=3))

    Args:
        epoch: the step (1-based epoch) at which to decide.
        k: how many of the best values at ``epoch`` continue.
    """

    def __init__(self, epoch: int = 1, k: int = 3) -> None:
        if int(epoch) < 1:
            raise ValueError(f"epoch={epoch} must be >= 1 (the epoch at which trials are ranked)")
        if int(k) < 1:
            raise ValueError(f"k={k} must be >= 1 (how many of the best trials continue)")
        self.epoch, self.k = int(epoch), int(k)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.last_step != self.epoch:
            return False
        value = trial.intermediate_values[self.epoch]
        if value is None or math.isnan(value):
            return True
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        better = 0
        for other in study.get_trials(deepcopy=False):
            if other.number == trial.number:
                continue
            v = other.intermediate_values.get(self.epoch)
            if v is not None and not math.isnan(v) and sign * v > sign * value:
                better += 1
        return better >= self.k
