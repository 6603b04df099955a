"""The per-epoch record a trial carries, which the reporter writes and every pruner reads.

One user attr per epoch, ``epoch_NNN`` (``EPOCH_ATTR``), holds that epoch's curve values
(train_loss, train_acc, val_loss, val_acc) and signature values (``sig/<centrality>/<aggregator>``,
``sig/nonfinite``), so a pruner decides from the `FrozenTrial` alone, in one process or across workers
sharing an RDB storage. The pruners' last forecasts travel the same way (``forecast_*`` attrs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from optuna.trial import FrozenTrial

from epochgraph.graph.signature import NONFINITE

EPOCH_ATTR = "epoch_{:03d}"  # user attr holding one epoch's signature and curve values
FORECAST_ATTR = "forecast_p_high"  # the pruner's last probability (P(high), or P(final >= best))
FORECAST_FINAL_ATTR = "forecast_final_val_acc"  # the forecast final val_acc (ForecastPruner)
UPPER_ATTR = "forecast_upper_{:03d}"  # the upper quantile forecast at that epoch (ForecastPruner)
SCHEDULE_ATTR = "lr_schedule"  # the LR of every epoch of the training, planned before it starts

__all__ = ["EPOCH_ATTR", "FORECAST_ATTR", "FORECAST_FINAL_ATTR", "SCHEDULE_ATTR", "UPPER_ATTR", "diverged",
           "planned_schedule", "trial_history"]


def trial_history(trial: FrozenTrial) -> dict[str, list[float]]:
    """``metric -> [epoch 1, epoch 2, ...]`` from the trial's per-epoch user attrs."""
    epochs = sorted(int(k[len("epoch_"):]) for k in trial.user_attrs if k.startswith("epoch_"))
    history: dict[str, list[float]] = {}
    for i, epoch in enumerate(epochs):
        for key, value in trial.user_attrs[EPOCH_ATTR.format(epoch)].items():
            history.setdefault(key, [math.nan] * len(epochs))[i] = float(value) if value is not None else math.nan
    return history


def diverged(history: Mapping[str, Sequence[float]]) -> bool:
    """Whether the weights went non-finite (``sig/nonfinite``) or a loss did (NaN or inf)."""
    flags = history.get(NONFINITE, [])
    losses = list(history.get("train_loss", [])) + list(history.get("val_loss", []))
    return any(f and f > 0 for f in flags) or any(not math.isfinite(v) for v in losses)


def planned_schedule(trial: FrozenTrial) -> list[float] | None:
    """The LR of every epoch the trial declared before training (``lr_schedule``), or None if it did not."""
    values = trial.user_attrs.get(SCHEDULE_ATTR)
    if not values:
        return None
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) and v >= 0 for v in out) else None
