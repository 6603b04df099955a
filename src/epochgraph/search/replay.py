"""Replay recorded trainings through an Optuna pruner, as if they were the trials of a live study.

Each recorded run becomes a trial of an in-memory study: epoch by epoch its signature and learning
curve go into the trial's user attrs and its val_acc is reported, exactly as a live job does
(`epochgraph.search.trial`), and the trial stops where the pruner says so. Replaying a population in many
random orders measures what a pruner would have saved and lost on it, without training anything:

* ``epochs_frac``: epochs trained / epochs of the whole population (1.0 = no pruning);
* ``regret``: best final accuracy in the population minus the best among trials that ran to the end;
* ``false_prune``: share of the pruned trials whose final accuracy was *high* (at or above the
  ``high_quantile`` of the population);
* ``high_pruned``: share of the high trials that were pruned;
* ``pruner_s``: seconds spent inside ``should_prune`` (the pruner's own cost).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from epochgraph.errors import EpochgraphError, choice_error
from epochgraph.forecast.predictor import CURVE_METRICS
from epochgraph.forecast.records import RunRecord, trained_epochs
from epochgraph.graph.signature import NONFINITE
from epochgraph.paths import CONF_DIR
from epochgraph.search.pause import by_standing, pauses
from epochgraph.search.trial_attrs import (
    EPOCH_ATTR,
    PAUSED_ATTR,
    PLANNED_EPOCHS_ATTR,
    RESUMED_FROM_ATTR,
    encode_value,
    mark_resumed,
    store_attr,
    stored_attr,
)

PrunerFactory = Callable[[], optuna.pruners.BasePruner]
METRICS = ("epochs_frac", "regret", "false_prune", "high_pruned", "pruned", "pruner_s", "best_done_frac", "resumed")


def run_length(run: RunRecord) -> int:
    """Epochs the run trained (`epochgraph.forecast.records.trained_epochs`), at least one."""
    return max(1, trained_epochs(run.history))


def reported_keys(run: RunRecord) -> list[str]:
    """The per-epoch keys a live job would store for ``run``: the signature and curve metrics its source
    reported (a finite value at some epoch); a metric never reported is left out, as a user's objective
    that does not report it leaves it out."""
    return [key for key, values in run.history.items()
            if (key.startswith("sig/") or key == NONFINITE or key in CURVE_METRICS)
            and any(v is not None and math.isfinite(float(v)) for v in values)]


def planned_length(run: RunRecord) -> int:
    """The epochs ``run`` was planned for: its ``trainer.epochs`` where recorded, else the epochs it trained."""
    try:
        return max(1, int(float(run.params["trainer.epochs"])))
    except (KeyError, TypeError, ValueError):
        return run_length(run)


def _epoch_attrs(run: RunRecord, i: int, keys: Sequence[str] | None = None) -> dict[str, float | str | None]:
    """What a live job stores in the trial's user attrs after epoch ``i + 1`` (``keys``: `reported_keys`
    of the run, when already known); a non-finite value as reported (the run diverged there)."""
    out: dict[str, float | str | None] = {}
    for key in reported_keys(run) if keys is None else keys:
        values = run.history[key]
        v = values[i] if i < len(values) else None
        out[key] = encode_value(None if v is None else float(v))
    return out


def _light(run: RunRecord) -> RunRecord:
    keep = {k: v for k, v in run.history.items() if k.startswith("sig/") or k in CURVE_METRICS}
    return RunRecord(run.run_id, {}, {}, keep, run.final_acc)


def replay(runs: Sequence[RunRecord], order: Sequence[int], pruner: optuna.pruners.BasePruner,
           high_quantile: float = 0.5) -> dict[str, float]:
    """Replay ``runs`` in ``order`` through ``pruner``; the metrics of the module docstring.

    A pruner that pauses (``pruner.pause`` and a ``should_resume(study, trial, last_pass)``) is replayed as the
    sweeper runs it: a trial the pruner marked paused keeps its place; before each new trial every paused one
    is asked whether it should resume (the likeliest first), and once every trial started, each paused trial
    is asked again (``last_pass``), the best placed first, until none should resume. A resumed trial is a new
    trial that carries the paused one's epochs (its records and values) and trains on from where it paused:
    no epoch counts twice."""
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(0))
    pausing = pauses(pruner)
    finals = np.nan_to_num(np.array([r.final_acc for r in runs]))
    best_run = int(max(order, key=lambda i: finals[i])) if len(order) else -1
    clock = {"trained": 0, "pruner_s": 0.0, "best_done": math.nan}
    budget = sum(run_length(runs[i]) for i in order)
    completed, pruned, paused = [], [], {}  # paused: run index -> (its trial's number, the epoch it paused at)

    def play(i: int, start: int = 0, resumes: int | None = None) -> None:
        run = runs[i]
        length = run_length(run)
        trial = study.ask()
        store_attr(trial, PLANNED_EPOCHS_ATTR, planned_length(run))  # each recorded training its own length
        if resumes is not None:
            trial.set_user_attr(RESUMED_FROM_ATTR, resumes)
        keys = reported_keys(run)
        for e in range(length):
            store_attr(trial, EPOCH_ATTR.format(e + 1), _epoch_attrs(run, e, keys))
            value = run.history["val_acc"][e]
            trial.report(float(value) if value is not None and math.isfinite(value) else 0.0, e + 1)
            if e < start:  # carried over from the paused trial: trained once, before it paused
                continue
            begin = time.perf_counter()
            stop = trial.should_prune()
            clock["pruner_s"] += time.perf_counter() - begin
            clock["trained"] += 1
            if stop:
                if pausing and stored_attr(trial, PAUSED_ATTR) == e + 1:  # the pruner paused it, as in a sweep
                    paused[i] = (trial.number, e + 1)
                else:
                    pruned.append(i)
                study.tell(trial, state=TrialState.PRUNED)
                return
        study.tell(trial, run.final_acc if math.isfinite(run.final_acc) else 0.0)
        completed.append(i)
        if i == best_run:
            clock["best_done"] = clock["trained"]

    def promote(candidates: Sequence[int], last_pass: bool = False) -> bool:
        """Resume the first of ``candidates`` (paused runs) the pruner says should resume; whether one did."""
        for i in candidates:
            number, epoch = paused[i]
            frozen = study.trials[number]
            if pruner.should_resume(study, frozen, last_pass=last_pass):
                del paused[i]
                mark_resumed(study, number, len(study.trials))
                play(i, start=epoch, resumes=number)
                return True
        return False

    for i in order:
        while pausing and paused and promote(_likeliest(paused, runs)):
            pass
        play(i)
    # the budget is spent: the paused trials are asked again, the best placed first, until none should resume (each
    # one resumed changes the study: what it finishes at is evidence for the others)
    while pausing and paused:
        run_of = {paused[i][0]: i for i in paused}  # trial number -> run index
        if not promote([run_of[t.number] for t in by_standing(study, [study.trials[n] for n in run_of])],
                       last_pass=True):
            break
    pruned += list(paused)
    high = finals >= np.quantile(finals[list(order)], high_quantile) if len(order) else finals > 0
    best_found = max((finals[i] for i in completed), default=0.0)
    n_high_pruned = int(sum(high[i] for i in pruned))
    return {"epochs_frac": clock["trained"] / budget, "regret": float(max(finals[list(order)]) - best_found),
            "false_prune": n_high_pruned / len(pruned) if pruned else 0.0,
            "high_pruned": n_high_pruned / max(1, int(sum(high[i] for i in order))), "pruned": float(len(pruned)),
            "pruner_s": clock["pruner_s"], "best_done_frac": clock["best_done"] / budget,
            "resumed": float(sum(1 for t in study.trials if RESUMED_FROM_ATTR in t.user_attrs))}


def _likeliest(paused: Mapping[int, tuple[int, int]], runs: Sequence[RunRecord]) -> list[int]:
    """The paused runs, latest pause first (the order of asking; each is asked with the study as it is)."""
    return sorted(paused, key=lambda i: -paused[i][1])


def _replay_order(runs: Sequence[RunRecord], order: Sequence[int], factory: PrunerFactory,
                  high_quantile: float) -> dict[str, float]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # in a worker process too
    return replay(runs, order, factory(), high_quantile)


def replay_orders(runs: Sequence[RunRecord], factory: PrunerFactory, orders: Sequence[Sequence[int]],
                  high_quantile: float = 0.5, n_jobs: int = 1) -> dict[str, Any]:
    """Mean and std of each metric over ``orders`` (a fresh pruner per order, ``n_jobs`` orders at once),
    plus the share of orders with zero regret and the per-order values."""
    if n_jobs > 1:
        from joblib import Parallel, delayed

        runs = [_light(r) for r in runs]  # the weight baselines are not replayed: do not ship them
        res = Parallel(n_jobs=n_jobs)(delayed(_replay_order)(runs, o, factory, high_quantile) for o in orders)
    else:
        res = [_replay_order(runs, o, factory, high_quantile) for o in orders]
    # best_done_frac is NaN in an order whose best trial never completed: left out of its mean (NaN if all)
    out: dict[str, Any] = {k: _mean_std([r[k] for r in res]) for k in METRICS}
    out["zero_regret_share"] = sum(r["regret"] == 0 for r in res) / len(res)
    out["per_order"] = res
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [float(v) for v in values if not math.isnan(float(v))]
    if not finite:
        return math.nan, math.nan
    return statistics.mean(finite), statistics.pstdev(finite)


def random_orders(n_runs: int, n_orders: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(n_runs) for _ in range(n_orders)]


def preset(path: Path) -> Any:
    """A ``conf/pruner`` preset as Hydra composes it: the presets of its ``defaults`` list (same group) first, then
    its own keys (``forecast_pause`` is ``forecast`` with pausing on)."""
    from omegaconf import OmegaConf

    own = OmegaConf.load(path)
    bases = [d for d in own.pop("defaults", []) if isinstance(d, str) and d != "_self_"]
    return OmegaConf.merge(*[preset(path.with_name(f"{b}.yaml")) for b in bases], own)


def pruner_factory(name: str, n_epochs: int, overrides: Mapping[str, Any] | None = None) -> PrunerFactory:
    """A factory of the pruner ``conf/pruner/<name>.yaml`` configures for a sweep, with ``overrides``
    (``trainer.epochs`` resolved to ``n_epochs``); built once now, so that a bad setting fails at once."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = Path(CONF_DIR) / "pruner" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise choice_error("pruner", name, known, key="pruners")
    root = OmegaConf.create({"trainer": {"epochs": n_epochs}, "pruner": preset(path)})
    root = OmegaConf.merge(root, {"pruner": dict(overrides or {})})
    cfg = OmegaConf.to_container(root, resolve=True)["pruner"]

    def make() -> optuna.pruners.BasePruner:
        with warnings.catch_warnings():  # Optuna marks some pruners experimental at construction
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return instantiate(cfg)

    make.config = cfg  # type: ignore[attr-defined]  # what it builds, resolved (the draws step keys its cache by it)
    try:
        make()
    except InstantiationException as err:  # the pruner's own ValueError, one line
        cause = err.__cause__ or err
        raise EpochgraphError(f"pruner {name} with {dict(overrides or {})}: {cause}") from None
    return make
