"""The per-epoch record a trial carries, which `epochgraph.report_epoch` writes and every pruner reads.

One system attr per epoch, ``epoch_NNN`` (``EPOCH_ATTR``), holds that epoch's curve values
(train_loss, train_acc, val_loss, val_acc, lr: `RECORDED_METRICS`, those reported) and signature values
(``sig/<centrality>/<aggregator>``, ``sig/nonfinite``), so a pruner decides from the `FrozenTrial` alone, in
one process or across workers sharing an RDB storage. A metric the trial did not report is absent (or None);
a reported non-finite value is stored as ``"nan"``, ``"inf"`` or ``"-inf"``. The bulky per-epoch data (the
records, the planned LR schedule ``lr_schedule``, the forecasts' upper quantiles ``forecast_upper_NNN``) are
system attrs, which optuna-dashboard does not list; a trial without a storage (``FixedTrial``) keeps them as
user attrs, and studies recorded with user attrs read the same. The user attrs hold what people read: the
last forecast (``forecast_p_high``, ``forecast_final_val_acc``) and the trial's MLflow run
(``mlflow_run_id``, ``mlflow_run``: its link in the MLflow UI).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from epochgraph.forecast.predictor import CURVE_METRICS
from epochgraph.graph.signature import NONFINITE

EPOCH_ATTR = "epoch_{:03d}"  # system attr holding one epoch's signature and curve values
FORECAST_ATTR = "forecast_p_high"  # the pruner's last probability (P(high), or P(final >= best))
FORECAST_FINAL_ATTR = "forecast_final_val_acc"  # the forecast final val_acc (ForecastPruner)
# the forecast made at an epoch, as MLflow metrics at step = epoch (every epoch a pruner forecast)
FORECAST_METRICS = {"probability": "forecast/probability", "final": "forecast/final_val_acc",
                    "upper": "forecast/upper", "best": "forecast/best", "rule": "forecast/p_rule"}
DECISION_ATTR = "forecast_decision"  # what the pruner decided at the last epoch and why, in words (user attr)
UPPER_ATTR = "forecast_upper_{:03d}"  # the upper quantile forecast at that epoch (ForecastPruner)
FORECAST_EPOCH_ATTR = "forecast_{:03d}"  # what the pruner forecast at that epoch ({name: value}, FORECAST_METRICS)
UNDECIDED_ATTR = "forecast_undecided_{:03d}"  # why the pruner could not forecast at that epoch (kept the trial)
PAUSED_ATTR = "paused_at_epoch"  # a pruned trial that may resume: the epoch its checkpoint holds
CHECKPOINT_ATTR = "checkpoint"  # a paused trial's checkpoint: the artifact path in its MLflow run
CHECKPOINT_BYTES_ATTR = "checkpoint_bytes"  # its size
RESUMED_FROM_ATTR = "resumed_from"  # a trial that goes on from a paused one: that trial's number (user attr)
RESUMED_BY_ATTR = "resumed_by_{:06d}"  # study system attr: paused trial NNN was resumed by the trial it holds
WITHDRAWN_ATTR = "withdrawn"  # a trial asked beyond n_trials (two workers asked at once): never trained, FAIL
PLANNED_EPOCHS_ATTR = "planned_epochs"  # the epochs the training is planned for (its own T), declared at its start
SCHEDULE_ATTR = "lr_schedule"  # the LR of every epoch of the training, planned before it starts
RECORDED_METRICS = (*CURVE_METRICS, "lr")  # the curve values an epoch's record holds (beside sig/...)

__all__ = ["CHECKPOINT_ATTR", "CHECKPOINT_BYTES_ATTR", "DECISION_ATTR", "EPOCH_ATTR", "FORECAST_ATTR",
           "FORECAST_EPOCH_ATTR", "FORECAST_FINAL_ATTR", "FORECAST_METRICS", "PAUSED_ATTR", "PLANNED_EPOCHS_ATTR",
           "RECORDED_METRICS", "RESUMED_BY_ATTR", "RESUMED_FROM_ATTR", "SCHEDULE_ATTR", "UNDECIDED_ATTR",
           "UPPER_ATTR", "diverged", "encode_value", "epoch_records", "mark_paused", "mark_resumed", "paused_epoch",
           "planned_epochs", "planned_schedule", "resumed_trials", "store_attr", "stored_attr", "trial_attr",
           "trial_history", "with_reported_values", "write_forecast"]


NONFINITE_VALUES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_EPOCH_PREFIX = EPOCH_ATTR.split("{")[0]


def store_attr(trial: Any, key: str, value: Any) -> None:
    """Store per-epoch data in a running trial: a system attr, a user attr where it has no storage."""
    from epochgraph.store.optuna_internals import set_system_attr

    if not set_system_attr(trial, key, value):
        trial.set_user_attr(key, value)


def write_forecast(study: Any, trial: FrozenTrial, epoch: int, forecast: Mapping[str, float | None],
                   upper: float | None = None, accuracy: bool = False, decision: str | None = None) -> bool:
    """A pruner writes what it forecast at ``epoch`` into the live ``trial`` it was asked about, through the
    study's storage (as Optuna's SuccessiveHalving writes its rung), so that the job, the Lightning callback and
    other workers read it from the trial, never from the pruner object: ``forecast`` ({``probability``,
    ``final``, ``upper``}: `FORECAST_METRICS`' names) in the system attr ``forecast_NNN``, the last probability
    and final in the user attrs people read (``forecast_p_high``, ``forecast_final_val_acc``), and ``upper``
    (the uncalibrated upper quantile the pruner's calibration reads back) in ``forecast_upper_NNN``. False, and
    nothing written, for a trial that is not a running trial of the study (built by hand, already finished).
    ``accuracy``: the forecast values are accuracies, clipped to [0, 1]; ``decision``: what was decided and why,
    in words (user attr ``forecast_decision``: the number that decided and what it was compared with)."""
    trial_id = getattr(trial, "_trial_id", None)
    if trial_id is None or trial_id < 0 or getattr(trial, "state", None) not in (None, TrialState.RUNNING):
        return False
    values = {k: float(v) for k, v in forecast.items() if v is not None}
    if accuracy:  # forecasts of an accuracy, as shown: within [0, 1] (the unclipped ``upper`` is what code reads)
        values.update({k: min(max(values[k], 0.0), 1.0) for k in ("final", "upper", "best") if k in values})
    storage = study._storage
    try:
        storage.set_trial_system_attr(trial_id, FORECAST_EPOCH_ATTR.format(int(epoch)), values)
        if upper is not None:
            storage.set_trial_system_attr(trial_id, UPPER_ATTR.format(int(epoch)), float(upper))
        for name, attr in (("probability", FORECAST_ATTR), ("final", FORECAST_FINAL_ATTR)):
            if name in values:
                storage.set_trial_user_attr(trial_id, attr, values[name])
        if decision:
            storage.set_trial_user_attr(trial_id, DECISION_ATTR, decision)
    except (KeyError, RuntimeError, optuna.exceptions.OptunaError):  # unknown or finished meanwhile
        return False
    return True


def mark_paused(study: Any, trial: FrozenTrial, epoch: int | None) -> bool:
    """A pruner that pauses writes it into the live ``trial`` it prunes (``paused_at_epoch``; None: stopped for
    good after all), through the study's storage, so that the job saves a checkpoint and the sweeper, on any
    worker, may resume it. False, nothing written, for a trial that is not a running trial of the study."""
    trial_id = getattr(trial, "_trial_id", None)
    if trial_id is None or trial_id < 0 or getattr(trial, "state", None) not in (None, TrialState.RUNNING):
        return False
    try:
        study._storage.set_trial_system_attr(trial_id, PAUSED_ATTR, None if epoch is None else int(epoch))
    except (KeyError, RuntimeError, optuna.exceptions.OptunaError):
        return False
    return True


def paused_epoch(trial: FrozenTrial) -> int | None:
    """The epoch a paused trial stopped at (its checkpoint's), or None: a trial pruned for good, or not pruned."""
    if trial.state != TrialState.PRUNED:
        return None
    value = trial.system_attrs.get(PAUSED_ATTR, trial.user_attrs.get(PAUSED_ATTR))
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def mark_resumed(study: Any, paused: int, by: int) -> None:
    """Record that paused trial ``paused`` goes on as trial ``by``: in the study (a finished trial takes no
    more attrs), as ``resumed_by_NNNNNN``; the resuming trial holds ``resumed_from`` itself."""
    study._storage.set_study_system_attr(study._study_id, RESUMED_BY_ATTR.format(int(paused)), int(by))


def resumed_trials(study: Any) -> dict[int, int]:
    """``{paused trial: the trial that resumed it}`` of the study."""
    prefix = RESUMED_BY_ATTR.split("{")[0]
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {int(k[len(prefix):]): int(v) for k, v in attrs.items() if k.startswith(prefix)}


def stored_attr(trial: Any, key: str) -> Any:
    """What `store_attr` stored under ``key`` in a running trial (None if nothing)."""
    from epochgraph.store.optuna_internals import live_system_attrs

    value = live_system_attrs(trial).get(key)
    return value if value is not None else getattr(trial, "user_attrs", {}).get(key)


def trial_attr(trial: FrozenTrial, key: str) -> Any:
    """``key`` of a finished or frozen trial, from its system attrs or (older studies) its user attrs."""
    value = trial.system_attrs.get(key)
    return value if value is not None else trial.user_attrs.get(key)


def epoch_records(trial: FrozenTrial) -> dict[int, Mapping[str, Any]]:
    """``{epoch: record}`` of every epoch the trial recorded (`EPOCH_ATTR`)."""
    out: dict[int, Mapping[str, Any]] = {}
    for attrs in (trial.user_attrs, trial.system_attrs):  # system attrs win
        for key, value in attrs.items():
            if key.startswith(_EPOCH_PREFIX) and key[len(_EPOCH_PREFIX):].isdigit() and isinstance(value, Mapping):
                out[int(key[len(_EPOCH_PREFIX):])] = value
    return out


def encode_value(value: float | None) -> float | str | None:
    """A metric as a user attr: a number; a reported non-finite value as ``"nan"``, ``"inf"`` or ``"-inf"``
    (JSON has no NaN, and optuna-dashboard reads the attrs as JSON); None (not reported) stays None."""
    if value is None:
        return None
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _decode(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return NONFINITE_VALUES.get(value.lower(), math.nan)
    return float(value)


def trial_history(trial: FrozenTrial) -> dict[str, list[float | None]]:
    """``metric -> [epoch 1, epoch 2, ...]`` from the trial's per-epoch records (`epoch_records`).

    A metric the trial did not report at an epoch is None (missing); one it reported as non-finite is
    NaN or inf (the training diverged)."""
    records = epoch_records(trial)
    epochs = sorted(records)
    history: dict[str, list[float | None]] = {}
    for i, epoch in enumerate(epochs):
        for key, value in records[epoch].items():
            history.setdefault(key, [None] * len(epochs))[i] = _decode(value)
    return history


def with_reported_values(history: Mapping[str, Sequence[float | None]],
                         trial: FrozenTrial) -> dict[str, list[float | None]]:
    """``history`` with val_acc taken from the trial's intermediate values (step t = epoch t) at the epochs
    that have no record: an objective that only calls ``trial.report(value, step)`` writes none, and its
    curve is all a pruner may read. A record's values win, its missing ones stay missing."""
    out = {k: list(v) for k, v in history.items()}
    recorded = epoch_records(trial)
    steps = [s for s in trial.intermediate_values if s >= 1 and s not in recorded]
    if not steps:
        return out
    acc = out.get("val_acc") or []
    acc = acc + [None] * (max(steps) - len(acc))
    for s in steps:
        acc[s - 1] = float(trial.intermediate_values[s])
    out["val_acc"] = acc
    return out


def diverged(history: Mapping[str, Sequence[float | None]]) -> bool:
    """Whether the weights went non-finite (``sig/nonfinite``) or a reported loss did (NaN or inf).

    A loss that is missing (None: a study that reports val_acc alone) is not a divergence."""
    flags = history.get(NONFINITE) or []
    losses = list(history.get("train_loss") or []) + list(history.get("val_loss") or [])
    return any(f is not None and f > 0 for f in flags) or any(v is not None and not math.isfinite(v) for v in losses)


def planned_epochs(trial: FrozenTrial) -> int | None:
    """The epochs the trial declared it trains for (``planned_epochs``), or None if it did not: trials of one
    study may differ in length (a sweep that searches ``trainer.epochs``), and a pruner compares each with its
    own end, not with a common last step."""
    value = trial_attr(trial, PLANNED_EPOCHS_ATTR)
    try:
        planned = int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return planned if planned and planned >= 1 else None


def planned_schedule(trial: FrozenTrial) -> list[float] | None:
    """The LR of every epoch the trial declared before training (``lr_schedule``), or None if it did not."""
    values = trial_attr(trial, SCHEDULE_ATTR)
    if not values:
        return None
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) and v >= 0 for v in out) else None
