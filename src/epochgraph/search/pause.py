"""Pause, don't kill: a pruned trial keeps a checkpoint and may resume when the study's evidence turns.

Optuna's pruning is final. A pruner that pauses (`ForecastPruner` with ``pause``) writes ``paused_at_epoch``
into the trial it prunes (`epochgraph.search.trial_attrs.mark_paused`); the job then stores a resumable
checkpoint of that epoch (model, optimizer, LR scheduler, RNG states: `epochgraph.training.checkpoint`) as an
artifact of the trial's MLflow run (`save_checkpoint`), and the trial ends PRUNED. Before a new trial is asked,
the sweeper asks the pruner whether a paused trial should go on instead (`resumable`, from what the trials
carry in the storage, so on any worker); a resumed trial is a new Optuna trial with the paused one's
parameters and the user attr ``resumed_from`` (`resume`), and its job carries the paused trial's epochs over
(`carry_over`: records and intermediate values) and trains on from the checkpoint in the same MLflow run.
A checkpoint that is missing or unreadable restarts the training from scratch, with one warning.

A trial whose chain completed, or was stopped for good, has its checkpoint deleted (`discard_checkpoints`)
unless ``mlflow.keep_checkpoints``; `checkpoint_bytes` is what the paused trials hold now.
"""

from __future__ import annotations

import datetime
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from epochgraph.search.trial_attrs import (
    CHECKPOINT_ATTR,
    CHECKPOINT_BYTES_ATTR,
    EPOCH_ATTR,
    FORECAST_EPOCH_ATTR,
    PAUSED_ATTR,
    RESUMED_FROM_ATTR,
    UPPER_ATTR,
    WITHDRAWN_ATTR,
    mark_resumed,
    paused_epoch,
    resumed_trials,
    store_attr,
)
from epochgraph.search.undecided import undecided

log = logging.getLogger("epochgraph")
CHECKPOINT_DIR = "checkpoint"  # a paused trial's resumable state in its MLflow run: checkpoint/epoch_NNN.pt
_CARRIED = tuple(a.split("{")[0] for a in (EPOCH_ATTR, FORECAST_EPOCH_ATTR, UPPER_ATTR))  # per-epoch attrs

__all__ = ["CHECKPOINT_DIR", "CLAIM_ATTR", "add_note", "by_standing", "carry_over", "checkpoint_artifact",
           "checkpoint_bytes", "claim", "completions_needed", "configurations", "could_lead",
           "delete_artifacts", "discard_checkpoints", "finished_configurations", "level", "load_checkpoint",
           "open_slots", "paused_here", "paused_trials", "pauses", "promoted", "resumable", "resume", "resumed_from",
           "save_checkpoint", "should_resume", "standing", "stops_for_good",
           "withdraw_surplus"]


def pauses(pruner: Any) -> bool:
    """Whether ``pruner`` pauses the trials it prunes and can say when one should resume."""
    return bool(getattr(pruner, "pause", False)) and callable(getattr(pruner, "should_resume", None))


def paused_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's paused trials that no trial resumed yet, the latest pause first (the order of asking)."""
    resumed = resumed_trials(study)
    out = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
           if paused_epoch(t) is not None and t.number not in resumed]
    return sorted(out, key=lambda t: (-int(paused_epoch(t) or 0), t.number))


def configurations(study: optuna.Study) -> list[FrozenTrial]:
    """One trial per configuration: every trial but the paused ones another trial resumed (their epochs go on
    there) and the ones withdrawn unrun (`withdraw_surplus`)."""
    resumed = resumed_trials(study)
    return [t for t in study.get_trials(deepcopy=False)
            if t.number not in resumed and WITHDRAWN_ATTR not in t.system_attrs]


def open_slots(study: optuna.Study, n_trials: int) -> int:
    """How many new configurations the study may still start: ``n_trials`` less the finished ones and the ones
    running (on any worker; a resumed trial is its paused configuration, counted once)."""
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return n_trials - finished_configurations(study) - running


def withdraw_surplus(study: optuna.Study, trial: optuna.trial.Trial, n_trials: int) -> bool:
    """Whether ``trial``, just asked, is beyond ``n_trials``; if so it ends FAIL, untrained, with the system attr
    ``withdrawn`` and a note saying why. Workers that find one open slot at the same moment each ask a trial; the
    storage orders the trials it creates, so each worker counts the configurations asked before its own and only
    the first ones within the budget go on: a study of many workers holds ``n_trials`` configurations, not one per
    worker more. A re-queued or enqueued trial (``failed_trial``, ``fixed_params``) is never withdrawn."""
    own = study._storage.get_trial(trial._trial_id)
    if "failed_trial" in own.system_attrs or "fixed_params" in own.system_attrs:
        return False
    before = [t for t in study.get_trials(deepcopy=False)
              if t._trial_id < trial._trial_id and t.state != TrialState.FAIL
              and RESUMED_FROM_ATTR not in t.user_attrs]
    if len(before) < n_trials:
        return False
    study._storage.set_trial_system_attr(trial._trial_id, WITHDRAWN_ATTR, True)
    add_note(study, trial._trial_id, f"**Withdrawn**, never trained: {len(before)} configurations were asked "
                                     f"before it, and the study's budget is n_trials={n_trials} (another worker "
                                     "asked for the last one at the same moment).")
    study.tell(trial, state=TrialState.FAIL)
    log.info("trial %3d withdrawn: the study's %d configurations were asked (another worker took the last one)",
             trial.number, n_trials)
    return True


def finished_configurations(study: optuna.Study) -> int:
    """The configurations that finished (complete or pruned; a paused trial that another resumed counted once):
    what ``n_trials`` counts."""
    return (len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
            - len(resumed_trials(study)))


def resumable(study: optuna.Study, candidates: list[FrozenTrial] | None = None,
              last_pass: bool = False) -> list[FrozenTrial]:
    """The paused trials (``candidates``, default all) the study's pruner says should resume now (``last_pass``:
    the study's budget of new trials is spent)."""
    if not pauses(study.pruner):
        return []
    return [t for t in (paused_trials(study) if candidates is None else candidates)
            if study.pruner.should_resume(study, t, last_pass=last_pass)]


CLAIM_ATTR = "resume_claim_{:06d}"  # study system attr: the worker (a random token) about to resume that trial
CLAIM_WAIT_S = 0.5  # how long a claim must stand before its worker resumes the trial


def claim(study: optuna.Study, paused: FrozenTrial) -> bool:
    """Whether this process may resume ``paused``: it writes a token of its own into the study, waits
    `CLAIM_WAIT_S` and checks that its token still stands and that no trial resumed ``paused`` meanwhile. Two
    workers asking at once both write; the later token stands and only its worker goes on (a worker that claims
    later sees the trial resumed)."""
    import time
    import uuid

    key, token = CLAIM_ATTR.format(paused.number), uuid.uuid4().hex
    study._storage.set_study_system_attr(study._study_id, key, token)
    time.sleep(CLAIM_WAIT_S)
    stands = study._storage.get_study_system_attrs(study._study_id).get(key) == token
    return stands and paused.number not in resumed_trials(study)


def add_note(study: optuna.Study, trial_id: int, line: str) -> None:
    """Add ``line`` to the trial's optuna-dashboard note (a paused trial's: where it paused, who resumed it), on
    any worker and for a finished trial too (notes live in the study's system attrs); a note that cannot be
    written is skipped with one debug line: the dashboard's view never stops a sweep."""
    try:
        from optuna_dashboard._note import get_note_from_system_attrs, save_note_with_version

        note = get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), trial_id)
        body = f"{note['body']}\n\n{line}" if note["body"] else line
        save_note_with_version(study._storage, study._study_id, trial_id, int(note["version"]) + 1, body)
    except Exception as err:  # an optuna-dashboard without these internals, a storage refusing the write
        log.debug("no note for trial id %d: %s", trial_id, err)


def resume(study: optuna.Study, paused: FrozenTrial) -> optuna.trial.Trial:
    """A new RUNNING trial that goes on from ``paused``: its parameters, the user attr ``resumed_from``; the
    study records ``resumed_by`` for the paused one. The job (`carry_over`) brings the epochs over. Call it after
    `claim` where several workers share the study."""
    template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, values=None,
                           datetime_start=datetime.datetime.now(), datetime_complete=None, params=dict(paused.params),
                           distributions=dict(paused.distributions),
                           user_attrs={RESUMED_FROM_ATTR: paused.number}, system_attrs={}, intermediate_values={},
                           trial_id=-1)
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    trial = optuna.trial.Trial(study, trial_id)
    mark_resumed(study, paused.number, trial.number)
    add_note(study, paused._trial_id, f"**Resumed** by trial {trial.number}, from epoch {paused_epoch(paused)}.")
    return trial


def resumed_from(study: optuna.Study, trial: optuna.trial.Trial) -> FrozenTrial | None:
    """The paused trial ``trial`` goes on from (its user attr ``resumed_from``; a retried trial inherits it)."""
    number = trial.user_attrs.get(RESUMED_FROM_ATTR)
    if number is None:
        return None
    from epochgraph.store.optuna_internals import trial_id

    paused = study._storage.get_trial(trial_id(study, int(number)))
    return paused if paused_epoch(paused) is not None else None


def carry_over(study: optuna.Study, trial: optuna.trial.Trial, paused: FrozenTrial) -> int:
    """Bring the epochs ``paused`` trained into ``trial``: their records and forecasts (system attrs) and
    intermediate values, up to the epoch it paused at; returns that epoch. Epochs ``trial`` holds already (a
    retried trial) are not written twice."""
    upto = int(paused_epoch(paused) or 0)
    have = dict(study._storage.get_trial(trial._trial_id).intermediate_values)
    for key, value in paused.system_attrs.items():
        if key.startswith(_CARRIED) and key.rsplit("_", 1)[-1].isdigit() and int(key.rsplit("_", 1)[-1]) <= upto:
            store_attr(trial, key, value)
    for step, value in sorted(paused.intermediate_values.items()):
        if step <= upto and step not in have:
            trial.report(value, step)
    return upto


def checkpoint_artifact(epoch: int) -> str:
    """Artifact path of the checkpoint a paused trial resumes from: ``checkpoint/epoch_004.pt``."""
    return f"{CHECKPOINT_DIR}/epoch_{epoch:03d}.pt"


def save_checkpoint(client: Any, run_id: str, trial: optuna.trial.Trial, checkpoint: Any) -> int:
    """Store ``checkpoint`` (`Checkpoint`) as ``checkpoint/epoch_NNN.pt`` of the run, delete the run's earlier
    one (a chain paused twice keeps its latest) and write its path and size into the trial; returns its bytes."""
    path = checkpoint_artifact(checkpoint.epoch)
    old = [f.path for f in client.list_artifacts(run_id, CHECKPOINT_DIR) if f.path != path]
    with tempfile.TemporaryDirectory() as tmp:
        local = checkpoint.save(Path(tmp, Path(path).name))
        size = local.stat().st_size
        client.log_artifact(run_id, str(local), artifact_path=CHECKPOINT_DIR)
    for stale in old:
        delete_artifacts(client, run_id, stale)
    store_attr(trial, CHECKPOINT_ATTR, f"runs:/{run_id}/{path}")
    store_attr(trial, CHECKPOINT_BYTES_ATTR, int(size))
    return size


def load_checkpoint(client: Any, paused: FrozenTrial) -> Any:
    """The `Checkpoint` ``paused`` stored, or None with one warning (missing, unreadable, of another epoch): its
    resumed trial then trains from scratch."""
    from epochgraph.errors import EpochgraphError
    from epochgraph.training.checkpoint import Checkpoint

    uri, epoch = paused.system_attrs.get(CHECKPOINT_ATTR), paused_epoch(paused)
    why = f"trial {paused.number} paused at epoch {epoch} left no checkpoint"
    if uri:
        try:
            run_id, path = str(uri)[len("runs:/"):].split("/", 1)
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = Checkpoint.load(client.download_artifacts(run_id, path, tmp))
            if ckpt.epoch == epoch:
                return ckpt
            why = f"the checkpoint {uri} holds epoch {ckpt.epoch}, not {epoch}"
        except EpochgraphError as err:
            why = str(err)
        except Exception as err:  # MLflow's own errors for a missing artifact or an unreachable store
            why = f"checkpoint {uri} is missing ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    log.warning("resuming trial %d: %s; it trains from scratch instead (its paused run stays as it was)",
                paused.number, why)
    return None


def checkpoint_bytes(study: optuna.Study) -> int:
    """Bytes of the checkpoints the study's paused trials hold now (those not resumed)."""
    return sum(int(t.system_attrs.get(CHECKPOINT_BYTES_ATTR) or 0) for t in paused_trials(study))


def discard_checkpoints(client: Any, run_id: str) -> bool:
    """Delete a run's checkpoints (its trial completed or was stopped for good); whether there were any."""
    if not client.list_artifacts(run_id, CHECKPOINT_DIR):
        return False
    return delete_artifacts(client, run_id, CHECKPOINT_DIR)


def delete_artifacts(client: Any, run_id: str, path: str) -> bool:
    """Delete a run's artifacts under ``path`` (a checkpoint no longer needed); False, with one warning, where the
    artifact store cannot delete."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(client.get_run(run_id).info.artifact_uri).delete_artifacts(path)
        return True
    except Exception as err:  # a store without deletion, or one unreachable now: the bytes stay, nothing breaks
        log.warning("run %s: could not delete its %s artifacts (%s)", run_id, path, str(err).splitlines()[0][:160])
        return False


def stops_for_good(trial: FrozenTrial) -> bool:
    """Whether a trial a pausing pruner stops is stopped for good, not paused: its training diverged (non-finite
    weights or loss) or its val_acc is no longer finite: no checkpoint, nothing to resume."""
    from epochgraph.search.trial_attrs import diverged, trial_history

    history = trial_history(trial)
    acc = [trial.intermediate_values.get(trial.last_step), *(history.get("val_acc") or [None])[-1:]]
    return diverged(history) or any(v is not None and not math.isfinite(v) for v in acc)


def level(trial: FrozenTrial, step: int, maximize: bool = True) -> float | None:
    """Where ``trial`` stood at ``step``: its best finite value up to that epoch (None if it did not reach it). A
    noisy curve's dip is not a standing: ranked by the value at the epoch alone, a winner whose val_acc dipped
    there (a step of a large LR, an unlucky validation batch) sits low and stays paused."""
    if step not in trial.intermediate_values:
        return None
    values = [v for s, v in trial.intermediate_values.items() if s <= step and math.isfinite(v)]
    if not values:
        return None
    return max(values) if maximize else -min(values)


def _levels_at(study: optuna.Study, step: int, but: int | None = None) -> list[float]:
    """`level` at ``step`` of each configuration that reached it (a resumed pause counted once, in the trial that
    went on), but trial ``but``."""
    out = [level(t, step, _maximize(study)) for t in configurations(study) if t.number != but]
    return [v for v in out if v is not None]


def _share_ahead(values: list[float], value: float) -> float:
    return sum(x > value for x in values) / max(1, len(values))


def _maximize(study: optuna.Study) -> bool:
    return study.direction == optuna.study.StudyDirection.MAXIMIZE


def _place(study: optuna.Study, trial: FrozenTrial) -> tuple[int, int] | None:
    """How many of the study's other configurations that reached ``trial``'s last epoch stood ahead of it there
    (by `level`), and how many reached it; None where it has no standing."""
    step = trial.last_step
    mine = None if step is None else level(trial, step, _maximize(study))
    if mine is None:
        return None
    others = _levels_at(study, step, but=trial.number)
    return sum(v > mine for v in others), len(others)


def standing(study: optuna.Study, trial: FrozenTrial) -> float:
    """The share of the study's other configurations that stood ahead of ``trial`` at its last epoch (`level`; 0:
    it led, 1: no standing)."""
    place = _place(study, trial)
    return 1.0 if place is None else place[0] / max(1, place[1])


def promoted(study: optuna.Study, trial: FrozenTrial, eta: float) -> bool:
    """Whether paused ``trial`` is among the top 1/``eta`` of the study's configurations that reached the epoch it
    paused at (by `level` there), as promotion-type ASHA promotes from a rung."""
    place = _place(study, trial)
    return place is not None and place[0] < (place[1] + 1) / eta


def could_lead(study: optuna.Study, trial: FrozenTrial, top: int) -> bool:
    """Whether paused ``trial`` stands, at the epoch it paused at, no lower than one of the study's ``top`` best
    completed trials stood there (the share of the configurations that reached that epoch ahead of it, by
    `level`): where early epochs rank the end, the winners led there and only leaders resume; where they mislead,
    the winners sat low, and so may a paused trial that could still win."""
    step = trial.last_step
    if step is None or step not in trial.intermediate_values:
        return False
    maximize = _maximize(study)
    done = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if t.value is not None and math.isfinite(t.value) and level(t, step, maximize) is not None),
                  key=lambda t: t.value, reverse=maximize)[:top]
    if not done:
        return True  # no winner to learn from: the pause was never backed
    at_step = _levels_at(study, step)
    lowest = max(_share_ahead(at_step, level(t, step, maximize)) for t in done)
    return _share_ahead(at_step, level(trial, step, maximize)) <= lowest + 1e-12


def by_standing(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """``trials`` (paused ones), the best placed at the epoch it paused at first, then the latest pause."""
    return sorted(trials, key=lambda t: (standing(study, t), -(t.last_step or 0), t.number))


def completions_needed(study: optuna.Study, pruner: Any) -> int:
    """The completed trials the last pass asks for before the study's standings decide: the rank check's
    ``min_complete``, or 1/``promote_eta`` of the study's configurations where that is fewer (a study of 10
    trials completes 4, as promotion-type ASHA's top rung holds a third of a rung below)."""
    return max(1, min(int(pruner.min_complete), math.ceil(len(configurations(study)) / float(pruner.promote_eta))))


def should_resume(pruner: Any, study: optuna.Study, trial: FrozenTrial, last_pass: bool = False) -> bool:
    """The `ForecastPruner`'s rule: whether paused ``trial`` (as it was paused) should go on. Its forecast from
    the epoch it paused at, the forecaster refitted and calibrated on the study as it is now, gives it
    P(final >= best) >= ``delta`` again (what turns the evidence: completed trials whose forecasts at that epoch
    fell short widen the calibration margin, a refit that learnt late bloomers, a best that did not rise); or,
    where the study has not shown that the epoch ranks the end (``pruner.ranks_end``), it is among the top
    1/``promote_eta`` of the trials at that epoch (`promoted`); once the budget is spent (``last_pass``), also
    where it stands there no lower than one of the ``resume_top`` best completed trials stood (`could_lead`: the
    study's own winners show how far down a winner may sit). A trial paused last had no promotion before the last
    pass, so the last pass promotes too. With ``resume_top=0``, or fewer completed trials than
    `completions_needed`, every such pause resumes at the last pass. Standings are by each trial's best value so
    far (`level`)."""
    try:
        p = pruner.prob_beat_best(study, trial, recalibrated=False)
    except Exception as err:  # as in prune: the trial stays paused, and the study goes on
        undecided(pruner, study, trial, err)
        return False
    if p is not None and p >= pruner.delta:
        return True
    step = trial.last_step  # a trusted epoch ranks the end: the pause stands
    if step is None or pruner.ranks_end(study, int(step)):
        return False
    if last_pass:  # a study with fewer completed trials than it needs has shown no ranking at all: it resumes
        completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        return (pruner.resume_top <= 0 or completed < completions_needed(study, pruner)
                or promoted(study, trial, pruner.promote_eta) or could_lead(study, trial, pruner.resume_top))
    return promoted(study, trial, pruner.promote_eta)


def paused_here(trial: optuna.trial.Trial, epoch: int) -> bool:
    """Whether the pruner paused the live ``trial`` at ``epoch`` (rather than stopping it for good)."""
    from epochgraph.search.trial_attrs import stored_attr

    return stored_attr(trial, PAUSED_ATTR) == int(epoch)
