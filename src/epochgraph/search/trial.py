"""The job side of a pruned sweep: reconnect to the Optuna trial, report every epoch, obey the pruner.

The sweeper asks the trial and passes its number to the job (``optuna.trial_number``); the job loads
the study from the shared storage with the pruner built from the same config, and wraps the trial with
``optuna.trial.Trial(study, trial_id)``. Each epoch it reports through `epochgraph.report_epoch` (the
epoch's signature and learning-curve values in a user attr, val_acc as the intermediate value), asks
``should_prune()`` and stores the pruner's forecast in the trial (`record_forecast`). The job never finishes the trial:
it returns its outcome and the sweeper tells it (exactly one side may).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from hydra.utils import instantiate

from epochgraph.errors import EpochgraphError
from epochgraph.hooks import EpochState
from epochgraph.search.epoch_report import record_forecast, report_epoch
from epochgraph.search.pause import (
    add_note,
    carry_over,
    checkpoint_artifact,
    discard_checkpoints,
    load_checkpoint,
    paused_here,
    resumed_from,
    save_checkpoint,
)
from epochgraph.search.trial_attrs import (
    DECISION_ATTR,
    FORECAST_ATTR,
    FORECAST_METRICS,
    PAUSED_ATTR,
    PLANNED_EPOCHS_ATTR,
    RESUMED_FROM_ATTR,
    SCHEDULE_ATTR,
    mark_paused,
    store_attr,
)
from epochgraph.store import optuna_internals
from epochgraph.store.storage import make_storage

log = logging.getLogger("epochgraph")


def build_pruner(cfg: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner of the ``pruner`` config group (``_target_`` + arguments)."""
    try:
        with warnings.catch_warnings():  # several of Optuna's pruners are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return instantiate(cfg["pruner"], _convert_="all")
    except Exception as err:
        cause = err.__cause__ or err
        raise EpochgraphError(f"cannot build pruner={cfg['pruner'].get('_target_')}: "
                              f"{str(cause).splitlines()[0][:200]}") from None


def declared_schedule(cfg: Mapping[str, Any]) -> list[float]:
    """The LR of every epoch the training of ``cfg`` will run (``optim.schedule``), before it starts."""
    from epochgraph.training.loop import steps_per_epoch
    from epochgraph.training.schedule import planned_lrs

    steps = steps_per_epoch(int(cfg["data"]["train_size"]), int(cfg["trainer"]["batch_size"]))
    return planned_lrs(cfg["optim"].get("schedule"), float(cfg["optim"]["lr"]), int(cfg["trainer"]["epochs"]), steps)


class TrialReporter:
    """Epoch hook connecting a training to its Optuna trial (see the module docstring)."""

    def __init__(self, study: optuna.Study, trial: optuna.trial.Trial, client: Any = None) -> None:
        self.study, self.trial, self.client = study, trial, client
        self.forecast: float | None = None
        self.run_id: str | None = None
        self.paused = False  # the pruner paused the trial (not stopped it for good) and its checkpoint is stored
        self.decision: str | None = None  # what the pruner decided last, in words (forecast_decision)
        self._heartbeat = contextlib.ExitStack()
        self._heartbeat.enter_context(optuna_internals.heartbeat(study, trial))

    @classmethod
    def connect(cls, cfg: Mapping[str, Any]) -> TrialReporter:
        opt = cfg["optuna"]
        storage = make_storage(cfg["storage"])
        try:
            study = optuna.load_study(study_name=opt["study_name"], storage=storage, pruner=build_pruner(cfg))
        except KeyError:
            raise EpochgraphError(f"no Optuna study {opt['study_name']!r} in the storage; "
                                  f"start the sweep with -m hydra/sweeper=epochgraph") from None
        trial = optuna.trial.Trial(study, optuna_internals.trial_id(study, int(opt["trial_number"])))
        store_attr(trial, SCHEDULE_ATTR, declared_schedule(cfg))  # what a forecaster may expect of the LR
        store_attr(trial, PLANNED_EPOCHS_ATTR, int(cfg["trainer"]["epochs"]))  # its own length: a sweep may search it
        from epochgraph.store import tracking

        return cls(study, trial, tracking.get_client(cfg["mlflow"]["tracking_uri"]))

    def close(self) -> None:
        self._heartbeat.close()

    def on_run_start(self, run_id: str, url: str) -> None:
        """Link the trial to its MLflow run: user attrs ``mlflow_run_id`` and ``mlflow_run`` (the UI's page of
        the run), and an optuna-dashboard note on the trial with the link, clickable there."""
        self.run_id = run_id
        self.trial.set_user_attr("mlflow_run_id", run_id)
        self.trial.set_user_attr("mlflow_run", url)
        from optuna_dashboard import save_note

        # the first link goes through the dashboard's own address (`make dashboard` forwards /mlflow/... to the
        # MLflow UI it is told of), so it works wherever the UI runs; the second is the address known at sweep time
        page = url.split("#/", 1)[1].split("?", 1)[0] if "#/" in url else ""
        relative = f"[open it in the MLflow UI](/mlflow/{page}) · " if page else ""
        went_on = self.trial.user_attrs.get(RESUMED_FROM_ATTR)
        save_note(self.trial, f"MLflow run of trial {self.trial.number}: {relative}[{run_id}]({url})" + (
            "" if went_on is None else f"\n\nGoes on from paused trial {went_on}, in its MLflow run."))

    def on_epoch_end(self, state: EpochState) -> None:
        m = state.metrics
        report_epoch(self.trial, state.epoch, **m)  # the graph stage's sig/... are in m already
        prune = self.trial.should_prune()
        forecasts = record_forecast(self.trial, state.epoch)
        m.update(forecasts)  # forecast/probability, forecast/final_val_acc, forecast/upper at step = epoch
        forecast = forecasts.get(FORECAST_METRICS["probability"])
        if forecast is not None:
            self.forecast = forecast
            state.tags[FORECAST_ATTR] = f"{forecast:.3f}"  # the last one, for filtering the runs table
        if forecasts:  # what decided, in words: written by the pruner through the storage, read there
            self.decision = optuna_internals.live_user_attrs(self.trial).get(DECISION_ATTR) or self.decision
        if self.decision:  # the number that decided and what it was compared with
            state.tags[DECISION_ATTR] = self.decision
        if prune:
            state.prune = True
            if paused_here(self.trial, state.epoch) and state.checkpoint is not None:
                self._save_checkpoint(state)

    def _save_checkpoint(self, state: EpochState) -> None:
        """The pruner paused the trial: store what it resumes from in its MLflow run; a checkpoint that cannot be
        stored makes the pause a prune for good (said in one line), never a failed trial."""
        try:
            size = save_checkpoint(self.client, self.run_id, self.trial, state.checkpoint())
        except Exception as err:
            mark_paused(self.study, optuna_internals.frozen_trial(self.study, self.trial), None)
            log.warning("trial %d: its checkpoint could not be stored (%s); pruned for good instead of paused",
                        self.trial.number, str(err).splitlines()[0][:200])
            return
        self.paused = True
        state.tags[PAUSED_ATTR] = str(state.epoch)
        add_note(self.study, self.trial._trial_id, f"**Paused** after epoch {state.epoch}: its checkpoint "
                 f"`{checkpoint_artifact(state.epoch)}` is in the MLflow run; the sweep may resume it.")
        log.info("trial %d paused after epoch %d: checkpoint of %.1f MB stored in its MLflow run",
                 self.trial.number, state.epoch, size / 2**20)


def _log_forecast_picture(client: Any, run_id: str, reporter: TrialReporter, state: str) -> None:
    """``forecast.png`` in the trial's run: its curve beside what the pruner forecast at each epoch."""
    import tempfile
    from pathlib import Path

    from epochgraph.search.sweep_report import plot_trial

    frozen = optuna_internals.frozen_trial(reporter.study, reporter.trial)
    if state == "PRUNED":  # as the sweeper will tell it, so that the picture marks where it stopped
        frozen.state = optuna.trial.TrialState.PRUNED
    with tempfile.TemporaryDirectory() as tmp:
        try:
            png = plot_trial(frozen, Path(tmp, "forecast.png"))
            if png is not None:
                client.log_artifact(run_id, str(png))
        except Exception as err:  # a picture never fails a trial
            log.warning("trial %d: no forecast picture (%s)", reporter.trial.number, str(err).splitlines()[0][:160])


def slurm_job() -> str | None:
    """The SLURM job this process runs in (``12_3`` for a task of an array, as squeue and scancel name it)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


class StudyColourScale:
    """The graph pictures' colour scale of a study's trials of one model, kept in the study (system attr
    ``graph_colour_scale:<model>``): fixed by the first picture drawn in the study, so that the pictures of two
    trials compare colour for colour (`~epochgraph.graph.graph_stage.SharedScale`)."""

    def __init__(self, study: optuna.Study, number: int, model: str) -> None:
        self.study, self.number, self.key = study, number, f"graph_colour_scale:{model}"

    def get(self) -> tuple[float, str] | None:
        found = self.study._storage.get_study_system_attrs(self.study._study_id).get(self.key)
        if not isinstance(found, dict):
            return None
        return float(found["vmax"]), f"the study's, from trial {found['trial']} epoch {found['epoch']}"

    def put(self, vmax: float, epoch: int) -> tuple[float, str]:
        if self.get() is None:  # two trials at once: both write, the later one's is the study's from then on
            self.study._storage.set_study_system_attr(self.study._study_id, self.key,
                                                      {"vmax": float(vmax), "trial": self.number, "epoch": int(epoch)})
        return self.get() or (vmax, f"fixed at epoch {epoch}")


def run_trial(cfg) -> dict[str, Any]:
    """Train one sweep trial, logged as a nested MLflow run; returns the outcome for the sweeper."""
    from epochgraph.models import model_label
    from epochgraph.store import tracking
    from epochgraph.training.job import run_job

    opt = cfg["optuna"]
    reporter = TrialReporter.connect(cfg)
    number, client = reporter.trial.number, reporter.client
    paused = resumed_from(reporter.study, reporter.trial)
    ckpt = load_checkpoint(client, paused) if paused is not None else None
    run_id, first = None, number
    try:
        tags = {"trial": str(number), "study": str(opt["study_name"]), "sweep": str(opt["study_name"])}
        if ckpt is not None:  # the paused trial's epochs become this trial's; its MLflow run goes on
            carry_over(reporter.study, reporter.trial, paused)
            run_id = paused.user_attrs.get("mlflow_run_id")
            first = int(client.get_run(run_id).data.tags.get("first_trial", paused.number))
            tags["resumed_from"] = str(paused.number)
            log.info("trial %d resumes trial %d from its checkpoint of epoch %d", number, paused.number, ckpt.epoch)
        else:
            tags["first_trial"] = str(number)
        if slurm_job() is not None:  # which SLURM job trained it (squeue, scancel, its log)
            tags["slurm_job"] = slurm_job()
        job = run_job(cfg, extra_hooks=[reporter], parent_run_id=opt.get("parent_run_id"), tags=tags,
                      run_name=tracking.trial_run_name(number, first), run_id=run_id, resume=ckpt,
                      shared_scale=StudyColourScale(reporter.study, number, model_label(cfg["model"])))
    finally:
        reporter.close()
    res = job.result
    state = "PRUNED" if res.pruned_at_epoch is not None else "COMPLETE"
    tracking.set_tags(client, job.run_id, {"state": "PAUSED" if reporter.paused else state})
    # the outcome first in the run name: the runs table shows it without extra columns or filters
    outcome = tracking.trial_outcome(pruned_at_epoch=res.pruned_at_epoch, paused=reporter.paused,
                                     diverged_at_epoch=res.epochs_run if res.diverged else None)
    client.update_run(job.run_id, name=tracking.outcome_run_name(tracking.trial_run_name(number, first), outcome))
    _log_forecast_picture(client, job.run_id, reporter, state)
    if not reporter.paused and not cfg["mlflow"].get("keep_checkpoints", False):
        discard_checkpoints(client, job.run_id)  # its chain ended: nothing will resume from them
    value = res.history[-1]["val_acc"] if res.history else float("nan")
    return {"state": state, "value": value if math.isfinite(value) else 0.0, "epochs": res.epochs_run,
            "run_id": job.run_id, "forecast": reporter.forecast, "diverged": res.diverged,
            "paused": reporter.paused, "resumed_from": paused.number if ckpt is not None else None,
            "decision": reporter.decision}
