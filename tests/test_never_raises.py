"""A forecast that cannot be made never stops a training: property-based tests of the forecaster and the pruner.

Hypothesis draws the rows, histories and studies a forecaster meets in the wild (feature subsets, constant and
single-valued columns, NaN and infinite patterns, zero and tiny weights, one or two trainings, 1 to 500 epochs,
objectives that report val_acc alone); the explicit cases are the failures seen before.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import optuna
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from epochgraph.errors import EpochgraphError
from epochgraph.forecast import forecaster as fc
from epochgraph.forecast.forecaster import CURVE_KEYS, FinalAccuracyForecaster, reached_epochs
from epochgraph.search.forecast_pruner import ForecastPruner
from epochgraph.search.trial_attrs import UNDECIDED_ATTR

LEVELS = (0.1, 0.5, 0.9, 0.95)
QUICK = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                 derandomize=True, database=None)
COLUMN_KINDS = ("normal", "constant", "single", "missing", "sparse", "infinite")


def _column(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    col = rng.normal(size=n)
    if kind == "constant":
        col = np.full(n, 0.3)
    elif kind == "single":  # one value, missing elsewhere
        col = np.full(n, np.nan)
        col[rng.integers(n)] = 1.5
    elif kind == "missing":
        col = np.full(n, np.nan)
    elif kind == "sparse":
        col[rng.uniform(size=n) < 0.8] = np.nan
    elif kind == "infinite":
        col[rng.uniform(size=n) < 0.3] = np.inf
    return col


def _weights(kind: str, n: int, rng: np.random.Generator) -> np.ndarray | None:
    if kind == "none":
        return None
    w = np.ones(n)
    if kind == "zeros":
        w[rng.uniform(size=n) < 0.5] = 0.0
    elif kind == "tiny":
        w = rng.choice([1e-12, 1.0], size=n)
    elif kind == "one_left":
        w[:] = 0.0
        w[rng.integers(n)] = 1.0
    return w


def _check_forecasts(model: FinalAccuracyForecaster, X: np.ndarray) -> None:
    q = model.predict_quantiles(X)
    assert q.shape == (len(X), len(LEVELS)) and np.all(np.isfinite(q))
    assert np.all(np.diff(q, axis=1) >= 0)
    p = model.prob_gain_at_least(X, np.linspace(-0.5, 0.5, len(X)), quantiles=q)
    assert np.all((p >= 0) & (p <= 1))


@QUICK
@given(n=st.integers(2, 60), kinds=st.lists(st.sampled_from(COLUMN_KINDS), min_size=1, max_size=8),
       weights=st.sampled_from(["none", "ones", "zeros", "tiny", "one_left"]), seed=st.integers(0, 2**16))
def test_the_forecaster_fits_and_forecasts_any_rows_or_says_in_one_line_why_not(n, kinds, weights, seed):
    rng = np.random.default_rng(seed)
    X = np.column_stack([_column(k, n, rng) for k in kinds])
    y = rng.normal(0, 0.1, n)
    w = _weights(weights, n, rng)
    model = FinalAccuracyForecaster(levels=LEVELS, max_iter=5)
    usable = int(np.sum(w > 0)) if w is not None else n
    if usable < 2:
        with pytest.raises(EpochgraphError, match=r"^\d+ pair\(s\) of epochs .* needs at least 2"):
            model.fit(X, y, sample_weight=w)
        return
    model.fit(X, y, sample_weight=w)
    # a column without a value in a row that counts is unseen, whatever else it holds
    counted = X if w is None else X[w > 0]
    assert set(model.unseen_) == set(np.flatnonzero(~np.isfinite(counted).any(axis=0)))
    _check_forecasts(model, X)


def test_a_column_whose_only_values_carry_zero_weight_is_unseen_not_an_error():
    # the reproduction: scikit-learn 1.9's HistGradientBoostingRegressor.fit raises "window shape cannot be
    # larger than input array shape" on it
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    X[:, 2] = np.nan
    X[:3, 2] = 1.0
    w = np.ones(20)
    w[:3] = 0.0
    model = FinalAccuracyForecaster(levels=LEVELS, max_iter=5).fit(X, rng.normal(size=20), sample_weight=w)
    assert list(model.unseen_) == [2]
    _check_forecasts(model, X)


def test_more_rows_than_the_binning_subsample_with_a_rare_column_fit(monkeypatch):
    # the cause in the pruner: the pairs of 500-epoch trainings outnumber scikit-learn's binning subsample, and
    # the LR-schedule columns, declared by a few warm trainings, may have no value in it; the forecaster draws
    # the subset itself (here at 300 rows), so the binning sees what the fit sees
    monkeypatch.setattr(fc, "MAX_ROWS", 300)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5000, 3))
    X[:, 2] = np.nan
    X[:2, 2] = 1.0  # two values in 5,000 rows: outside the 300 drawn
    model = FinalAccuracyForecaster(levels=LEVELS, max_iter=5).fit(X, rng.normal(size=5000))
    assert 2 in model.unseen_
    _check_forecasts(model, X[:50])


def _history(epochs: int, metrics: tuple[str, ...], holes: float, rng: np.random.Generator) -> dict[str, list]:
    t = np.arange(1, epochs + 1)
    acc = np.clip(0.1 + rng.uniform(0, 0.8) * (1 - np.exp(-t / rng.uniform(1, max(2, epochs)))), 0, 1)
    out: dict[str, list] = {"val_acc": acc.tolist()}
    for m in metrics:
        if m != "val_acc":
            values = (rng.uniform(0.01, 3, epochs) if "loss" in m else rng.uniform(0, 1, epochs)).tolist()
            out[m] = [None if rng.uniform() < holes else v for v in values]
    return out


@QUICK
@given(lengths=st.lists(st.sampled_from([1, 2, 3, 5, 8, 15, 40, 120]), min_size=1, max_size=2),
       extra=st.sets(st.sampled_from(CURVE_KEYS[1:])), holes=st.sampled_from([0.0, 0.5, 1.0]),
       weights=st.none() | st.lists(st.sampled_from([0.0, 1e-9, 1.0, 3.0]), min_size=2, max_size=2),
       seed=st.integers(0, 2**16))
@example(lengths=[500], extra=set(), holes=0.0, weights=None, seed=0)  # a 500-epoch val_acc-only training
def test_the_forecaster_learns_from_one_or_two_trainings_of_any_length(lengths, extra, holes, weights, seed):
    rng = np.random.default_rng(seed)
    metrics = ("val_acc", *sorted(extra))
    histories = [_history(n, metrics, holes, rng) for n in lengths]
    w = None if weights is None else weights[:len(histories)]
    model = FinalAccuracyForecaster(levels=LEVELS, max_iter=5, metrics=metrics)
    pairs = sum(n * (n - 1) // 2 for n, wk in zip(lengths, w or [1.0] * len(lengths)) if wk > 0)
    if pairs < 2:
        with pytest.raises(EpochgraphError, match="needs at least 2"):
            model.fit_histories(histories, w)
        return
    model.fit_histories(histories, w)
    for h in histories:
        t = reached_epochs(h)
        p = model.prob_at_least([h], t=t, s=t + 10, values=[0.5])
        assert 0 <= p[0] <= 1


def _study_of(curves: list[list[float]], pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """A study whose objective reports val_acc alone (Optuna's whole interface) and asks the pruner each epoch;
    ``study.optimize`` re-raises whatever ``should_prune`` raises (``catch=()``)."""
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(0))
    queue = iter(curves)

    def objective(trial: optuna.Trial) -> float:
        curve = next(queue)
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return curve[-1]

    study.optimize(objective, n_trials=len(curves), catch=())
    return study


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
          database=None)
@given(n_trials=st.integers(1, 8), epochs=st.sampled_from([2, 3, 6, 20, 60]), seed=st.integers(0, 2**16),
       flat=st.booleans())
def test_the_pruner_never_raises_in_a_study_that_reports_val_acc_alone(n_trials, epochs, seed, flat):
    rng = np.random.default_rng(seed)
    t = np.arange(1, epochs + 1)
    curves = []
    for _ in range(n_trials):
        if flat:  # every trial at one value: ties everywhere, constant columns
            curves.append([0.1] * epochs)
        else:
            top = rng.uniform(0.2, 0.9)
            curves.append(np.clip(0.1 + (top - 0.1) * (1 - np.exp(-t / rng.uniform(1, epochs))), 0, 1).tolist())
    # cold (no warm start) and eager (no rank check): the forecaster is fitted on the study's first trials
    pruner = ForecastPruner(max_epoch=epochs, min_trials=2, min_rank_corr=None, min_complete=2,
                            forecaster_params={"max_iter": 5})
    study = _study_of(curves, pruner)
    states = {tr.state for tr in study.trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert len(study.trials) == n_trials


def test_a_forecaster_that_cannot_be_fitted_keeps_the_trial_records_why_and_warns_once(monkeypatch, caplog):
    def broken_fit(self, X, y, sample_weight=None, groups=None):
        raise ValueError("window shape cannot be larger than input array shape")

    monkeypatch.setattr(FinalAccuracyForecaster, "fit", broken_fit)
    epochs = 5
    curves = [[0.1 * k + 0.02 * e for e in range(epochs)] for k in (8, 7, 1, 1, 1)]
    pruner = ForecastPruner(max_epoch=epochs, min_trials=2, min_rank_corr=None, min_complete=2)
    with caplog.at_level(logging.WARNING, logger="epochgraph"):
        study = _study_of(curves, pruner)
        _study_of(curves, pruner)  # a second study: said again, once
    assert all(tr.state == optuna.trial.TrialState.COMPLETE for tr in study.trials)  # nothing pruned, no raise
    undecided = {(tr.number, k): v for tr in study.trials for k, v in tr.system_attrs.items()
                 if k.startswith(UNDECIDED_ATTR.split("{")[0])}
    # from the third trial on (two finished: the cold forecaster is due), every epoch before the last
    assert sorted(undecided) == [(n, UNDECIDED_ATTR.format(e)) for n in (2, 3, 4) for e in range(1, epochs)]
    assert set(undecided.values()) == {"ValueError: window shape cannot be larger than input array shape"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("ForecastPruner: no forecast at epoch 1 of trial 2 (ValueError: window shape")
    assert "the trial is kept" in warnings[0]


def test_the_signature_pruner_keeps_the_trial_when_its_classifier_cannot_be_fitted(monkeypatch, caplog):
    from epochgraph.search.pruner import SignaturePruner

    pruner = SignaturePruner(check_epochs=[1], n_startup_trials=2)
    monkeypatch.setattr(SignaturePruner, "forecast", lambda self, study, trial: math.log(-1))
    with caplog.at_level(logging.WARNING, logger="epochgraph"):
        study = _study_of([[0.5, 0.6], [0.2, 0.3]], pruner)
    assert [tr.state for tr in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert study.trials[0].system_attrs[UNDECIDED_ATTR.format(1)] == "ValueError: math domain error"
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1


@pytest.mark.slow
def test_the_shipped_forecast_pruner_replays_val_acc_only_curves_without_raising():
    # the development populations recorded elsewhere with val_acc alone kept, and 500-epoch trainings; as
    # shipped (warm start from the committed tables, recalibration, rank check); no draw may raise
    from epochgraph.forecast.population import from_table, read_table
    from epochgraph.search.replay import pruner_factory, random_orders, replay
    from tests.curves import EXTERNAL, synthetic_runs, val_acc_only

    draws = [(synthetic_runs(4, 500, seed=3), 500)]
    assert all(path.is_file() for path in EXTERNAL)
    for path in EXTERNAL:
        runs = val_acc_only(from_table(read_table(path)))
        draws.append((runs, max(len(r.history["val_acc"]) for r in runs)))
    for runs, epochs in draws:
        order = random_orders(len(runs), 1, seed=epochs)[0][:12 if epochs < 500 else 4]
        res = replay(runs, order, pruner_factory("forecast", epochs)())
        assert 0 < res["epochs_frac"] <= 1
