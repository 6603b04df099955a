"""`report_epoch`: the one call a training loop makes per epoch to put its curve (and graph signature) in
its Optuna trial, report val_acc to the pruner and log the same values to MLflow.

Everything a pruner reads travels through the trial: the epoch's record is the ``epoch_NNN`` user attr
(`epochgraph.search.trial_attrs`) and val_acc its intermediate value at ``step=epoch``. Both live in the
study's storage, so a pruner in another process sharing an RDB storage (SQLite, PostgreSQL) decides from
them as it would in this one. The project's own trainer reports through the same function
(`epochgraph.search.trial.TrialReporter`), and so does the Lightning callback
(`epochgraph.lightning.EpochgraphCallback`).

A metric given as None (or not given) is *missing*: it is left out of the record, and a forecaster fitted
on the study sees that the study does not report it. Only a reported NaN or inf is a divergence.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

from epochgraph.search.trial_attrs import (
    EPOCH_ATTR,
    FORECAST_EPOCH_ATTR,
    FORECAST_METRICS,
    PLANNED_EPOCHS_ATTR,
    RECORDED_METRICS,
    encode_value,
    store_attr,
    stored_attr,
)

__all__ = ["add_to_record", "epoch_values", "metric_value", "record_epoch", "record_forecast", "report_epoch"]


def metric_value(name: str, value: Any) -> float | None:
    """``value`` as a float (None stays None); a value that is not one number is a one-line TypeError."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, bool)) or not (isinstance(value, numbers.Number) or hasattr(value, "item")):
        raise TypeError(f"{name}={value!r} must be a number (or None when not measured), e.g. {name}=0.87")
    try:
        return float(value.item() if hasattr(value, "item") else value)  # torch and numpy scalars
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name}={value!r} must be one number, not an array; pass e.g. {name}=tensor.item()") from None


def _active_mlflow_run() -> Any:
    """The active MLflow run, without importing MLflow when the caller never did (then none is active)."""
    mlflow = sys.modules.get("mlflow")
    return mlflow.active_run() if mlflow is not None else None


def report_epoch(trial: Any, epoch: int, *, val_acc: float, model: Any = None, planned_epochs: int | None = None,
                 checkpoint: Any = None, example_input: Any = None, **metrics: float | None) -> dict[str, float | str]:
    """Record epoch ``epoch`` of a training in its Optuna ``trial`` and report ``val_acc`` to its pruner.

    It stores the epoch's curve values (val_acc, val_loss, train_acc, train_loss, lr: those given) and,
    when ``model`` is given, its graph signature (`epochgraph.graph_signature`) in the trial's ``epoch_NNN``
    user attr; calls ``trial.report(val_acc, epoch)``; and logs val_acc and every metric with
    ``step=epoch`` to the active MLflow run, if there is one. Then ask the trial as usual::

        for epoch in range(1, epochs + 1):
            ...  # train one epoch, evaluate
            report_epoch(trial, epoch, val_acc=acc, model=net, val_loss=loss, train_loss=train_loss)
            if trial.should_prune():
                raise optuna.TrialPruned()

    Args:
        trial: the `optuna.trial.Trial` of the objective (any object with ``report`` and ``set_user_attr``).
        epoch: the epoch that just ended, numbered from 1 (the pruners read epoch t as step t).
        val_acc: the validation accuracy after that epoch, in [0, 1]; a non-finite one is reported as 0.0
            (and recorded as it was: the run diverged).
        model: the network, whose signature is computed and recorded (``sig/<centrality>/<aggregator>``).
        planned_epochs: the epochs this training is planned for, when trials of the study differ in length
            (declared once, in the trial's ``planned_epochs``): the forecast pruner then compares the trial
            with its own end; without it, with the pruner's ``max_epoch``.
        example_input: a batch ``model`` accepts, where neither its layers nor its attributes tell its input size
            (``example_input_shape``); a model whose signature cannot be computed still has its epoch recorded.
        checkpoint: what the training resumes from after this epoch (e.g. ``{"model": net.state_dict(),
            "optimizer": opt.state_dict(), "epoch": epoch}``): `epochgraph.optimize` saves it when the pruner
            pauses the trial here, and `epochgraph.resume_state` gives it back to the trial that resumes it.
        metrics: more values of the epoch: ``val_loss``, ``train_acc``, ``train_loss``, ``lr`` and
            ``sig/...`` keys are recorded for the pruners; every one is logged to MLflow. None = not measured.

    Returns:
        The epoch's record as stored in the trial.
    """
    epoch, values = epoch_values(epoch, val_acc, model, metrics, example_input)
    if planned_epochs is not None:
        if isinstance(planned_epochs, bool) or not isinstance(planned_epochs, numbers.Integral) or planned_epochs < 1:
            raise ValueError(f"planned_epochs={planned_epochs!r} must be a positive integer (the training's epochs)")
        if stored_attr(trial, PLANNED_EPOCHS_ATTR) != int(planned_epochs):
            store_attr(trial, PLANNED_EPOCHS_ATTR, int(planned_epochs))
    record = record_epoch(trial, epoch, values)
    if checkpoint is not None:
        from epochgraph.search.optimize import keep_checkpoint

        keep_checkpoint(trial, epoch, checkpoint)
    if _active_mlflow_run() is not None:
        import mlflow

        mlflow.log_metrics(values, step=epoch)
    return record


def epoch_values(epoch: Any, val_acc: Any, model: Any = None, metrics: Mapping[str, Any] | None = None,
                 example_input: Any = None) -> tuple[int, dict[str, float]]:
    """The checked epoch and ``{metric: value}`` of one epoch: val_acc, the metrics measured (None ones left
    out) and the model's signature when ``model`` is given. Bad input is a one-line ValueError / TypeError."""
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 1:
        raise ValueError(f"epoch={epoch!r} must be an integer >= 1 (epochs are numbered from 1; "
                         f"a loop counting from 0 passes epoch + 1)")
    acc = metric_value("val_acc", val_acc)
    if acc is None:
        raise TypeError("val_acc=None: report_epoch needs the epoch's validation accuracy, e.g. val_acc=0.87")
    values = {"val_acc": acc}
    for key, value in (metrics or {}).items():
        number = metric_value(key, value)
        if number is not None:
            values[key] = number
    if model is not None:
        values.update(_signature(model, example_input))
    return int(epoch), values


_UNSIGNED: weakref.WeakSet = weakref.WeakSet()  # models whose signature could not be computed (said once each)


def _signature(model: Any, example_input: Any = None) -> dict[str, float]:
    """The model's graph signature, or nothing (one warning per model) where it cannot be computed: a network
    outside the rolled graph's rules must never stop the user's training; its curve is still recorded and
    reported, and the pruners work from the curve."""
    from epochgraph.graph.signature import graph_signature

    try:
        return graph_signature(model, example_input)
    except Exception as err:
        try:
            first = model not in _UNSIGNED
            _UNSIGNED.add(model)
        except TypeError:  # not weak-referenceable: say it every time rather than never
            first = True
        if first:
            text = str(err).splitlines()[0] if str(err) else type(err).__name__
            warnings.warn(f"no graph signature for {type(model).__name__} ({text}); its epochs are recorded and "
                          f"pruned from the learning curve alone", stacklevel=3)
        return {}


def record_epoch(trial: Any, epoch: int, values: Mapping[str, float]) -> dict[str, float | str]:
    """Store one epoch's values in ``trial`` (the ``epoch_NNN`` record: `RECORDED_METRICS` and ``sig/...``)
    and report its val_acc at ``step=epoch`` (a non-finite one as 0.0); returns the record. Every way of
    reporting (`report_epoch`, the trainer, the Lightning callback) ends here."""
    record = {k: encode_value(v) for k, v in values.items() if k in RECORDED_METRICS or k.startswith("sig/")}
    store_attr(trial, EPOCH_ATTR.format(epoch), record)
    acc = values["val_acc"]
    trial.report(acc if math.isfinite(acc) else 0.0, epoch)
    return record


def add_to_record(trial: Any, epoch: int, values: Mapping[str, float]) -> dict[str, float | str]:
    """Add values measured after epoch ``epoch`` was reported to its record (Lightning reduces the training
    metrics of an epoch only after its validation); returns the record."""
    key = EPOCH_ATTR.format(epoch)
    added = {k: encode_value(v) for k, v in values.items() if k in RECORDED_METRICS or k.startswith("sig/")}
    record = {**(stored_attr(trial, key) or {}), **added}
    store_attr(trial, key, record)
    return record


def record_forecast(trial: Any, epoch: int) -> dict[str, float]:
    """What the study's pruner forecast at the last ``should_prune()`` of epoch ``epoch``, read from ``trial``
    (the pruner wrote it there: `epochgraph.search.trial_attrs.write_forecast`), as MLflow metrics for
    ``step=epoch`` (``forecast/probability``, ``forecast/final_val_acc``, ``forecast/upper``: the calibrated
    bound the pruner compares with the best); empty for an epoch the pruner forecast nothing at."""
    made = stored_attr(trial, FORECAST_EPOCH_ATTR.format(int(epoch))) or {}
    return {FORECAST_METRICS[name]: float(v) for name, v in made.items() if name in FORECAST_METRICS and v is not None}
