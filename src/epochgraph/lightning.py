"""`EpochgraphCallback`: epochgraph in a PyTorch Lightning training (``pip install 'epochgraph[lightning]'``).

At every validation end (not the sanity check) it computes the network's graph signature, logs it through
the trainer's loggers (an ``MLFlowLogger`` included) with ``step=epoch``, and, given an Optuna trial,
records the epoch in the trial and reports the monitored accuracy (`epochgraph.search.epoch_report`, the
path `epochgraph.report_epoch` and the project's trainer take), then raises ``optuna.TrialPruned`` when
the trial's pruner says so: the behaviour of optuna-integration's ``PyTorchLightningPruningCallback``,
with two differences that the pruners of this package need: epochs are numbered from 1 (step t = the t-th
epoch, where Optuna's callback reports ``current_epoch`` from 0), and the record carries the epoch's
curve values and signature, so `epochgraph.ForecastPruner` works across workers on RDB storage.

As with Optuna's callback, ``trainer.fit`` then raises ``optuna.TrialPruned`` and Lightning ends the
loggers' runs as failed; the callback tags an MLflow run ``pruned=true`` and ``pruned_at_epoch=N`` first.

Pausing: with a pruner that pauses (`epochgraph.ForecastPruner` with ``pause=True``) and the study run by
`epochgraph.optimize`, the callback hands the paused epoch's Lightning checkpoint (``trainer.save_checkpoint``:
weights, optimizer, LR schedulers, loop state) to `epochgraph.optimize`, which keeps it; a trial that resumes it
gets it back as a file from `resume_checkpoint`, for ``trainer.fit(..., ckpt_path=...)``::

    def objective(trial):
        module = MyModule(lr=trial.suggest_float("lr", 1e-4, 1e-1, log=True))
        trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=[EpochgraphCallback(trial)])
        trainer.fit(module, datamodule=dm, ckpt_path=resume_checkpoint(trial))   # None: a fresh trial
        return trainer.callback_metrics["val_acc"].item()

    epochgraph.optimize(study, objective, n_trials=30)
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - the extra is not installed
    raise ImportError("epochgraph.lightning needs PyTorch Lightning: pip install 'epochgraph[lightning]'") from err

from epochgraph.search.epoch_report import add_to_record, epoch_values, metric_value, record_epoch, record_forecast
from epochgraph.search.optimize import keep_checkpoint, resume_state
from epochgraph.search.pause import pauses

__all__ = ["EpochgraphCallback", "resume_checkpoint"]

# our metric name -> the name a LightningModule usually logs it under (self.log("val_loss", ...))
CURVE_KEYS = {"val_loss": "val_loss", "train_acc": "train_acc", "train_loss": "train_loss"}
# Lightning validates inside the training epoch and reduces its epoch-level training metrics afterwards: at
# validation end they are the previous epoch's, so they join the epoch's record at the training epoch's end
TRAIN_KEYS = ("train_acc", "train_loss")


class EpochgraphCallback(pl.Callback):
    """Log the graph signature at every validation end and, with ``trial``, report to Optuna and prune.

    Example::

        def objective(trial):
            model = MyLightningModule(lr=trial.suggest_float("lr", 1e-3, 1e-1, log=True))
            trainer = lightning.pytorch.Trainer(max_epochs=10, logger=MLFlowLogger(...),
                                                callbacks=[EpochgraphCallback(trial)])
            trainer.fit(model, train_loader, val_loader)  # raises optuna.TrialPruned when pruned
            return trainer.callback_metrics["val_acc"].item()

    Args:
        trial: the Optuna trial to report to (None: only log the signatures).
        monitor: the logged metric reported as the trial's val_acc (an accuracy in [0, 1]).
        model: the attribute of the LightningModule holding the network whose signature is computed
            (e.g. ``"net"``); None: the LightningModule itself.
        signature: compute and log the signature (False: report the curve alone).
        metrics: our curve names (``val_loss``, ``train_acc``, ``train_loss``) -> the names the module logs
            them under, when they differ (e.g. ``{"train_loss": "train_loss_epoch"}``); the LR of the first
            optimizer is recorded as ``lr``.
    """

    def __init__(self, trial: optuna.trial.Trial | None = None, monitor: str = "val_acc", *,
                 model: str | None = None, signature: bool = True, metrics: Mapping[str, str] | None = None) -> None:
        super().__init__()
        if trial is not None and not (hasattr(trial, "report") and hasattr(trial, "should_prune")):
            raise TypeError(f"trial={trial!r} must be the optuna.trial.Trial of the objective (or None)")
        unknown = sorted(set(metrics or {}) - set(CURVE_KEYS))
        if unknown:
            raise ValueError(f"metrics names {unknown[0]!r}; it maps our curve names {sorted(CURVE_KEYS)} to "
                             f"the logged ones, e.g. metrics={{'train_loss': 'train_loss_epoch'}}")
        self.trial, self.monitor, self.model, self.signature = trial, str(monitor), model, bool(signature)
        self.metrics = {**CURVE_KEYS, **dict(metrics or {})}
        self.pruned_at_epoch: int | None = None
        self._reported: int | None = None  # the last epoch reported to the trial

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.trial is not None and trainer.world_size > 1:
            raise ValueError(f"EpochgraphCallback(trial=...) reports from one process; this trainer runs "
                             f"{trainer.world_size} (strategy={type(trainer.strategy).__name__}): train each "
                             f"trial on devices=1 and run trials in parallel workers sharing an RDB storage")
        if self.model is not None and not hasattr(pl_module, self.model):
            raise ValueError(f"model={self.model!r} is not an attribute of {type(pl_module).__name__}; name the "
                             f"attribute holding the network (or model=None for the LightningModule itself)")

    def _network(self, pl_module: pl.LightningModule) -> Any:
        return pl_module if self.model is None else getattr(pl_module, self.model)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning also calls this after the sanity check, which is no epoch
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        logged = trainer.callback_metrics
        score = logged.get(self.monitor)
        epoch = int(trainer.current_epoch) + 1
        if score is None:
            warnings.warn(f"EpochgraphCallback: the metric {self.monitor!r} is not among the logged metrics "
                          f"({', '.join(sorted(logged)) or 'none'}) at epoch {epoch}; log it with "
                          f"self.log({self.monitor!r}, ...) or set monitor=", stacklevel=2)
            return
        curve = {ours: logged[theirs] for ours, theirs in self.metrics.items()
                 if theirs in logged and ours not in TRAIN_KEYS}
        if trainer.optimizers:
            curve["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        network = self._network(pl_module) if self.signature else None
        epoch, values = epoch_values(epoch, score, network, curve)
        signature = {k: v for k, v in values.items() if k.startswith("sig/")}
        if self.trial is None:
            self._log(trainer, signature, epoch)
            return
        record_epoch(self.trial, epoch, values)
        self._reported = epoch
        prune = self.trial.should_prune()
        self._log(trainer, {**signature, **record_forecast(self.trial, epoch)}, epoch)
        if prune:
            self.pruned_at_epoch = epoch
            study = getattr(self.trial, "study", None)
            if study is not None and pauses(study.pruner):  # it may resume: epochgraph.optimize keeps this epoch
                keep_checkpoint(self.trial, epoch, _lightning_checkpoint(trainer))
            raise optuna.TrialPruned(f"Trial was pruned at epoch {epoch}.")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = int(trainer.current_epoch) + 1
        if self.trial is None or self._reported != epoch or not trainer.is_global_zero:
            return
        logged = trainer.callback_metrics
        train = {ours: metric_value(ours, logged[self.metrics[ours]])
                 for ours in TRAIN_KEYS if self.metrics[ours] in logged}
        if train:
            add_to_record(self.trial, epoch, train)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, optuna.TrialPruned) or self.pruned_at_epoch is None:
            return
        from lightning.pytorch.loggers import MLFlowLogger

        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger) and logger.run_id is not None:
                logger.experiment.set_tag(logger.run_id, "pruned", "true")
                logger.experiment.set_tag(logger.run_id, "pruned_at_epoch", str(self.pruned_at_epoch))

    @staticmethod
    def _log(trainer: pl.Trainer, metrics: Mapping[str, float], epoch: int) -> None:
        if not metrics:
            return
        for logger in trainer.loggers:
            logger.log_metrics(dict(metrics), step=epoch)


def _lightning_checkpoint(trainer: pl.Trainer) -> dict[str, Any]:
    """The trainer's own checkpoint of this moment (``trainer.save_checkpoint``), as the dict it writes."""
    import torch

    with tempfile.TemporaryDirectory(prefix="epochgraph-pause-") as tmp:
        path = Path(tmp, "paused.ckpt")
        trainer.save_checkpoint(path)
        return torch.load(path, map_location="cpu", weights_only=False)


def resume_checkpoint(trial: optuna.trial.Trial, folder: str | Path | None = None) -> str | None:
    """For ``trainer.fit(..., ckpt_path=resume_checkpoint(trial))``: the Lightning checkpoint of the epoch the paused
    trial that ``trial`` resumes stopped at, written to a file in ``folder`` (default: a temporary folder); None for
    a fresh trial, or (one warning, `epochgraph.resume_state`) when the checkpoint is missing or unreadable: the
    fit then starts from scratch. The paused trial's epochs are brought into ``trial`` (as `resume_state` does)."""
    import torch

    state = resume_state(trial)
    if state is None:
        return None
    folder = Path(folder) if folder is not None else Path(tempfile.gettempdir(), "epochgraph-resume")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{trial.study.study_name}-trial_{trial.number:06d}.ckpt"
    torch.save(state, path)
    return str(path)
