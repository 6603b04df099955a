"""The forecast pruner's online calibration: how far its upper bound fell short for the study's own trials."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from optuna.trial import TrialState

from epochgraph.search.trial_attrs import UPPER_ATTR, trial_attr


def conformal_margin(study: Any, step: int, uppers: Mapping[int, Mapping[int, float]], delta: float) -> float:
    """How far the forecast's upper quantile fell short for the study's completed trials at ``step``.

    Online split-conformal calibration: every forecast is recorded when made (before the outcome is known:
    ``uppers``, trial number -> epoch -> upper quantile, else the trial's ``forecast_upper_NNN``), so once a trial
    completes, ``final - forecast upper quantile`` is an honest residual. The margin is the residuals' conformal
    (1 - delta) quantile (their maximum while fewer than (1 - delta)^-1 trials completed), never negative: a prior
    fitted on other networks is thereby widened to what this study's trials show, never narrowed (the completed
    trials are the survivors of pruning, whose residuals understate how far a pruned late bloomer would climb)."""
    res = []
    for tr in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        up = uppers.get(tr.number, {}).get(step, trial_attr(tr, UPPER_ATTR.format(step)))
        if up is not None and tr.value is not None and math.isfinite(tr.value):
            res.append(float(tr.value) - float(up))
    if not res:
        return 0.0
    res.sort()
    k = math.ceil((len(res) + 1) * (1 - delta))
    return max(res[k - 1] if k <= len(res) else res[-1], 0.0)
