"""Recalibration of P(final >= best): a monotone map learnt on trainings the forecaster was not fitted on.

The forecaster's P(final >= best) is read from quantiles fitted on other trainings; on a population it has
not seen it over-states the chance of beating the best (``make bench ARGS="bench.steps=[calibration]"``:
its reliability curve lies below the diagonal). `fit_recalibration` learns a map for it where the
forecaster was fitted without the trainings it forecasts: each warm population in turn is held out (leave
one population out; with fewer than three populations, five groups of trainings), the forecaster is fitted
on the others' pairs of epochs, and for the held-out trainings, at random epochs t, P(final >= bar) is set
against whether the final reached the bar. The bar is the best final of a random number of the population's
other trainings: the incumbent of a study that completed that many. Half the points hide the LR schedule,
as a study that declares none would.

The map is Platt's sigmoid (scikit-learn's ``LogisticRegression`` on logit P, the ``sigmoid`` method of
``CalibratedClassifierCV``): two parameters, continuous and strictly increasing, so the recalibrated P
still falls strictly as the bar rises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from epochgraph.forecast.forecaster import (
    EPOCHS_KEY,
    SCHEDULE_KEY,
    FinalAccuracyForecaster,
    History,
    pair_features,
    reached_epochs,
)

EPS = 1e-6
MAX_BAR_TRIALS = 64  # the incumbent of a study that completed 1..64 trials


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Recalibration:
    """logit P' = ``slope`` * logit P + ``intercept`` (the identity: slope 1, intercept 0)."""

    slope: float = 1.0
    intercept: float = 0.0
    points: int = 0  # held-out forecasts it was fitted on (0: the identity, nothing to fit on)

    def __call__(self, p: float | np.ndarray) -> np.ndarray:
        if self.slope == 1 and self.intercept == 0:
            return np.asarray(p, dtype=float)  # the identity, exactly
        z = self.slope * _logit(p) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    @classmethod
    def fit(cls, p: np.ndarray, outcome: np.ndarray) -> Recalibration:
        """Platt's sigmoid on ``(p, outcome)``; the identity when the outcomes do not vary or the fit would
        reverse the order (a slope <= 0)."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(outcome, dtype=int)
        if len(y) < 10 or y.min() == y.max():
            return cls()
        lr = LogisticRegression(C=1e4).fit(_logit(p)[:, None], y)
        slope = float(lr.coef_[0, 0])
        return cls(slope, float(lr.intercept_[0]), len(y)) if slope > 0 else cls()


def _folds(populations: Sequence[str], seed: int) -> np.ndarray:
    """A fold per training: its population, or one of five groups when there are fewer than 3 populations."""
    names = sorted(set(populations))
    if len(names) >= 3:
        return np.array([names.index(p) for p in populations])
    return np.random.default_rng(seed).permutation(len(populations)) % 5


def held_out_points(histories: Sequence[History], populations: Sequence[str], pairs: tuple[np.ndarray, ...],
                    make_forecaster: Callable[[], FinalAccuracyForecaster], source: str, metrics: Sequence[str],
                    rows: int = 3000, per_fold: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(P, outcome)`` of forecasts made by forecasters that did not see the training forecast (module
    docstring). ``pairs``: ``training_pairs(histories, ...)`` as ``X, y, groups`` (groups index
    ``histories``); ``rows``: the pairs each fold's forecaster is fitted on (a random subset)."""
    X, y, groups = pairs
    fold = _folds(populations, seed)
    rng = np.random.default_rng(seed)
    finals = np.array([h["val_acc"][reached_epochs(h) - 1] if reached_epochs(h) else np.nan for h in histories],
                      dtype=float)
    ps, outcomes = [], []
    for k in np.unique(fold):
        train = np.flatnonzero(fold[groups] != k)
        mine = np.flatnonzero(fold == k)
        if len(train) < 2 or len(mine) < 2:
            continue
        pick = train if len(train) <= rows else rng.choice(train, rows, replace=False)
        model = make_forecaster().fit(X[pick], y[pick])
        feats, bars, ends = [], [], []
        for _ in range(per_fold):
            i = int(rng.choice(mine))
            history = histories[i] if rng.random() < 0.5 else {**histories[i], SCHEDULE_KEY: None}
            n = reached_epochs(history)
            T = int(history.get(EPOCHS_KEY) or n)
            others = mine[(mine != i) & np.isfinite(finals[mine])]
            if n < T or T < 2 or not others.size or not np.isfinite(finals[i]):
                continue  # only trainings that ran to their planned end have an outcome
            t = int(rng.integers(1, T))
            m = int(rng.integers(1, min(MAX_BAR_TRIALS, others.size) + 1))
            bar = float(finals[rng.choice(others, m, replace=False)].max())
            x = pair_features(history, t, T, source, metrics, T)
            feats.append(x)
            bars.append(bar - x[0])  # x[0]: val_acc at t
            ends.append(finals[i] >= bar)
        if feats:
            ps.append(model.prob_gain_at_least(np.array(feats), np.array(bars)))
            outcomes.append(np.array(ends, dtype=int))
    if not ps:
        return np.empty(0), np.empty(0, dtype=int)
    return np.concatenate(ps), np.concatenate(outcomes)


def fit_recalibration(histories: Sequence[History], populations: Sequence[str], pairs: tuple[np.ndarray, ...],
                      make_forecaster: Callable[[], FinalAccuracyForecaster], source: str, metrics: Sequence[str],
                      rows: int = 3000, seed: int = 0) -> Recalibration:
    """The `Recalibration` of the forecasts `held_out_points` makes."""
    return Recalibration.fit(*held_out_points(histories, populations, pairs, make_forecaster, source, metrics,
                                              rows=rows, seed=seed))

