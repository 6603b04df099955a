"""`optimize`: ``study.optimize`` for your own objective, with trials that pause and resume.

A pruner that pauses (`ForecastPruner` with ``pause=True``) marks the trials it stops as paused. For such a trial
to go on later, its objective hands `report_epoch` what it would resume from (``checkpoint=``: any object
``torch.save`` writes, typically the model's and the optimizer's state dicts and the epoch), and asks
`resume_state` at its start::

    def objective(trial):
        net, opt = build(trial)
        state = epochgraph.resume_state(trial)          # None for a fresh trial
        first = 1
        if state is not None:
            net.load_state_dict(state["model"]); opt.load_state_dict(state["optimizer"]); first = state["epoch"] + 1
        for epoch in range(first, EPOCHS + 1):
            acc = train_one_epoch(net, opt)
            state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}
            epochgraph.report_epoch(trial, epoch, val_acc=acc, model=net, checkpoint=state)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return acc

    epochgraph.optimize(study, objective, n_trials=30)

`optimize` runs the study as the sweeper does: before each new trial it asks the pruner whether a paused trial
should go on instead (a resumed trial is a new trial with the paused one's parameters and the user attr
``resumed_from``; `resume_state` brings the paused epochs over and returns the checkpoint), and once
``n_trials`` configurations finished, it asks the paused trials again, the best placed first, until none should
resume. A paused trial's checkpoint is a file under ``checkpoint_dir`` (shared by the workers of one study), deleted
once the trial that resumed it ends; a checkpoint that is missing or unreadable makes `resume_state` return None
with one warning, and the trial trains from scratch. Several workers may run `optimize` on one study: ``n_trials``
counts the trials running on every worker (`epochgraph.search.pause.open_slots`, `withdraw_surplus`); with a storage
that has ``heartbeat_interval`` a running trial beats, and a dead worker's trial is failed once its heartbeat is
stale, as with ``study.optimize``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from epochgraph.search import pause
from epochgraph.search.trial_attrs import (
    CHECKPOINT_ATTR,
    CHECKPOINT_BYTES_ATTR,
    mark_paused,
    paused_epoch,
    store_attr,
)
from epochgraph.store import optuna_internals

log = logging.getLogger("epochgraph")
_PENDING: dict[int, tuple[int, Any]] = {}  # trial id -> (epoch, the last checkpoint report_epoch was given)
_WARNED: set[str] = set()  # studies told that their objective gives no checkpoint

__all__ = ["keep_checkpoint", "optimize", "resume_state"]


def keep_checkpoint(trial: Any, epoch: int, checkpoint: Any) -> None:
    """Hold ``checkpoint`` (of ``epoch``) in memory until the trial's outcome is known: `optimize` saves it only
    when the pruner paused the trial at that epoch (`report_epoch` calls this for its ``checkpoint=``)."""
    trial_id = getattr(trial, "_trial_id", None)
    if trial_id is not None:
        _PENDING[trial_id] = (int(epoch), checkpoint)


def resume_state(trial: optuna.trial.Trial) -> Any | None:
    """What the paused trial ``trial`` resumes saved (the ``checkpoint=`` given to `report_epoch` at the epoch it
    paused at), its epochs' records and values brought into ``trial``; None for a fresh trial, or (one warning)
    when the checkpoint is missing or unreadable: the objective then trains from scratch."""
    import torch

    study = getattr(trial, "study", None)
    paused = pause.resumed_from(study, trial) if study is not None else None
    if paused is None:
        return None
    uri = paused.system_attrs.get(CHECKPOINT_ATTR)
    try:
        state = torch.load(str(uri), map_location="cpu", weights_only=False)
    except Exception as err:  # missing, cut short, not a torch file
        log.warning("trial %d resumes trial %d: its checkpoint %s is %s (%s); it trains from scratch instead",
                    trial.number, paused.number, uri, "missing" if not uri or not Path(str(uri)).is_file()
                    else "unreadable", str(err).splitlines()[0][:120] if str(err) else type(err).__name__)
        return None
    pause.carry_over(study, trial, paused)
    log.info("trial %d resumes trial %d from its checkpoint of epoch %d", trial.number, paused.number,
             paused_epoch(paused))
    return state


def _save(study: optuna.Study, trial: optuna.trial.Trial, checkpoint_dir: Path) -> None:
    """The pruner paused ``trial``: save the checkpoint of the epoch it paused at, or stop it for good (one warning
    per study) when the objective gave none."""
    import torch

    epoch = trial.storage.get_trial(trial._trial_id).last_step
    held = _PENDING.pop(trial._trial_id, None)
    if held is None or held[0] != epoch:
        mark_paused(study, trial.storage.get_trial(trial._trial_id), None)
        if study.study_name not in _WARNED:
            _WARNED.add(study.study_name)
            log.warning("trial %d was paused at epoch %s but its objective gave report_epoch no checkpoint= for that "
                        "epoch: pruned for good (pass checkpoint={...} to report_epoch to let paused trials resume)",
                        trial.number, epoch)
        return
    path = checkpoint_dir / study.study_name / f"trial_{trial.number:06d}_epoch_{epoch:03d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(held[1], tmp)
    tmp.replace(path)  # never a half-written checkpoint under its name
    store_attr(trial, CHECKPOINT_ATTR, str(path.resolve()))
    store_attr(trial, CHECKPOINT_BYTES_ATTR, path.stat().st_size)


def _discard(study: optuna.Study, trial: optuna.trial.Trial) -> None:
    """``trial`` ended (complete, or paused again with its own checkpoint): the checkpoint it resumed from goes."""
    paused = pause.resumed_from(study, trial)
    uri = paused.system_attrs.get(CHECKPOINT_ATTR) if paused is not None else None
    if uri and Path(str(uri)).is_file():
        Path(str(uri)).unlink()


def _running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def optimize(study: optuna.Study, objective: Callable[[optuna.trial.Trial], float], n_trials: int, *,
             checkpoint_dir: str | Path = "checkpoints", catch: Sequence[type[Exception]] = ()) -> None:
    """Run ``objective`` until the study holds ``n_trials`` finished configurations, resuming paused trials (module
    docstring). Without a pruner that pauses it is ``study.optimize(objective, n_trials=...)`` in effect.

    Args:
        study: the Optuna study (its pruner decides pauses and resumes).
        objective: ``objective(trial) -> value``; raises ``optuna.TrialPruned`` when ``trial.should_prune()``.
        n_trials: configurations to finish (a paused trial that resumed counts once).
        checkpoint_dir: where paused trials' checkpoints are kept (shared by the workers of a study).
        catch: exception types that fail a trial without stopping the study (as ``study.optimize``'s).
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials={n_trials!r} must be an integer >= 1")
    checkpoint_dir = Path(checkpoint_dir)
    pausing = pause.pauses(study.pruner)
    while True:
        # as study.optimize: a trial whose worker died is failed once its heartbeat is stale (a storage with
        # heartbeat_interval; the retry callback may re-queue it), so that it holds no slot of the budget forever
        _quietly(optuna.storages.fail_stale_trials, study)
        last_pass = pause.finished_configurations(study) >= n_trials
        resumes = []
        if pausing:
            candidates = pause.paused_trials(study)
            resumes = pause.resumable(study, pause.by_standing(study, candidates) if last_pass else candidates,
                                      last_pass=last_pass)
        resumes = [t for t in resumes[:1] if pause.claim(study, t)]  # one worker resumes each paused trial
        # the budget is spent, or the trials running on other workers take what is left of it
        if not resumes and (last_pass or pause.open_slots(study, n_trials) <= 0):
            if pausing and pause.paused_trials(study) and _running(study):
                time.sleep(1.0)  # another worker's trial may still change what should resume
                continue
            return
        trial = pause.resume(study, resumes[0]) if resumes else _quietly(study.ask)
        if not resumes and pause.withdraw_surplus(study, trial, n_trials):
            continue  # another worker asked for the last open slot at the same moment
        _run(study, objective, trial, checkpoint_dir, tuple(catch))


def _quietly(call: Callable, *args: Any) -> Any:
    """``call(*args)`` without Optuna's notes that heartbeats are experimental and meant for ``study.optimize``:
    `optimize` beats and fails stale trials as ``study.optimize`` does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return call(*args)


def _run(study: optuna.Study, objective: Callable, trial: optuna.trial.Trial, checkpoint_dir: Path,
         catch: tuple[type[Exception], ...]) -> None:
    try:
        with optuna_internals.heartbeat(study, trial):  # as study.optimize: other workers see it is alive
            value = objective(trial)
    except optuna.TrialPruned:
        if pause.paused_here(trial, trial.storage.get_trial(trial._trial_id).last_step or -1):
            _save(study, trial, checkpoint_dir)
        _discard(study, trial)
        study.tell(trial, state=TrialState.PRUNED)
        return
    except catch as err:
        log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, err)
        study.tell(trial, state=TrialState.FAIL)
        return
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        _PENDING.pop(trial._trial_id, None)
    _discard(study, trial)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d returned %r: failed", trial.number, value)
        return
    study.tell(trial, value)
