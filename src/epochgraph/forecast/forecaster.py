"""Forecast a training's final accuracy, with its uncertainty, from its first epochs (S4 as regression).

The paper's predictor (`epochgraph.forecast.predictor.SignaturePredictor`) answers "will this run end above the
median?". Pruning needs another answer: "can this run still beat the best one so far?" (predictive
termination: Domhan et al. 2015, Baker et al. 2017, LC-PFN 2023). `FinalAccuracyForecaster` gives a
predictive distribution of val_acc at a later epoch ``s`` from epochs ``1..t``, and
`FinalAccuracyForecaster.prob_at_least` turns it into P(val_acc at s >= a value).

It learns from *pairs* of epochs: every (t, s) with t < s that a training reached gives one example, so a
pruned trial's partial curve is data too (val_acc at epoch 4 from epochs 1..2), not only completed ones.
The target is the *gain* ``val_acc[s] - val_acc[t]``, which transfers between architectures better than
the accuracy itself (their accuracy ranges differ, the shape of a learning curve much less).

Features of a pair (`pair_features`), ``source``:

* ``curve``: val_acc at t, its best so far, its change over the last epoch and the last three, val_acc at
  epoch 1, log val_loss and log train_loss at t, train_acc at t and its gap to val_acc, and the horizon
  (t, s, s - t, log(s / t));
* ``hybrid``: the same plus the graph signature at t (`epochgraph.graph.signature`) and its change over the
  last epoch.

Methods (``method``), all scikit-learn estimators:

* ``quantile_gbm``: one `HistGradientBoostingRegressor` (quantile loss) per level in ``levels``;
* ``conformal``: a gradient-boosting point forecast with split-free cross-conformal intervals from
  MAPIE (`mapie.regression.CrossConformalRegressor`, folds grouped by training so that pairs of one
  training never sit on both sides), one interval per level;
* ``forest``: a random forest; its quantiles are those of the trees' forecasts widened by the
  out-of-bag residuals.

Example::

    fc = FinalAccuracyForecaster(source="curve").fit_histories(histories)
    fc.prob_at_least([history], t=2, s=15, values=[0.85])  # P(val_acc at epoch 15 >= 0.85)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from epochgraph.errors import EpochgraphError, choice_error
from epochgraph.graph.centrality import CENTRALITIES
from epochgraph.graph.signature import AGGREGATORS, metric_name

History = Mapping[str, Sequence[Any]]
SOURCES = ("curve", "hybrid")
METHODS = ("quantile_gbm", "conformal", "forest")
LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
SIGNATURE_COLUMNS = tuple(metric_name(c, a) for c in CENTRALITIES for a in AGGREGATORS)
LOSS_CLIP = 1e6


def _column(history: History, key: str, n: int) -> np.ndarray:
    values = list(history.get(key, []))[:n]
    out = np.full(n, np.nan)
    for i, v in enumerate(values):
        if v is not None:
            out[i] = float(v)
    return out


def reached_epochs(history: History) -> int:
    """Epochs a training reached: up to its last finite val_acc (0 without any)."""
    acc = _column(history, "val_acc", len(history.get("val_acc", [])))
    finite = np.flatnonzero(np.isfinite(acc))
    return int(finite[-1] + 1) if finite.size else 0


class _Curves:
    """One training's per-epoch arrays (``[n]`` each), read once for all of its pairs."""

    def __init__(self, history: History, n: int | None = None) -> None:
        n = reached_epochs(history) if n is None else n
        self.n = n
        self.acc = np.nan_to_num(_column(history, "val_acc", n), nan=0.0)
        self.val_loss = np.log(np.clip(np.nan_to_num(_column(history, "val_loss", n), nan=LOSS_CLIP), 1e-6, LOSS_CLIP))
        self.train_loss = np.log(np.clip(np.nan_to_num(_column(history, "train_loss", n), nan=LOSS_CLIP),
                                         1e-6, LOSS_CLIP))
        self.train_acc = np.nan_to_num(_column(history, "train_acc", n), nan=0.0)
        self.best = np.maximum.accumulate(self.acc) if n else self.acc
        self.sig = np.column_stack([_column(history, k, n) for k in SIGNATURE_COLUMNS]) if n else np.empty((0, 10))

    def features(self, t: int, s: np.ndarray, source: str) -> np.ndarray:
        """``[len(s), n_features]``: the features of pairs (t, s) (1-based epochs, t <= self.n)."""
        i = t - 1
        acc = self.acc
        prev = acc[i - 1] if i >= 1 else acc[i]
        back3 = acc[max(0, i - 3)]
        head = [acc[i], self.best[i], acc[i] - prev, (acc[i] - back3) / max(1, min(3, i)), acc[0],
                self.val_loss[i], self.train_loss[i], self.train_acc[i], self.train_acc[i] - acc[i]]
        if source == "hybrid":
            sig = self.sig[i]
            dsig = sig - (self.sig[i - 1] if i >= 1 else sig)
            head = [*head, *np.sign(sig) * np.log1p(np.abs(sig)), *dsig]
        s = np.asarray(s, dtype=float)
        fixed = np.tile(np.asarray(head, dtype=float), (len(s), 1))
        horizon = np.column_stack([np.full(len(s), float(t)), s, s - t, np.log(s / t)])
        return np.hstack([fixed, horizon])


def pair_features(history: History, t: int, s: int, source: str = "curve") -> np.ndarray:
    """The feature vector for forecasting val_acc at epoch ``s`` from epochs ``1..t`` of ``history``."""
    reached = reached_epochs(history)
    if reached < t:
        raise EpochgraphError(f"the history has {reached} epochs with a val_acc; a forecast from t={t} needs {t}")
    return _Curves(history, t).features(t, np.array([s]), source)[0]


def training_pairs(histories: Sequence[History], source: str = "curve",
                   max_epoch: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``X, y, groups`` for every pair (t < s) each training reached: features, the gain
    val_acc[s] - val_acc[t], and the training's index (for grouped cross-validation)."""
    xs, ys, gs = [], [], []
    for k, history in enumerate(histories):
        curves = _Curves(history)
        n = curves.n if max_epoch is None else min(curves.n, max_epoch)
        for t in range(1, n):
            s = np.arange(t + 1, n + 1)
            xs.append(curves.features(t, s, source))
            ys.append(curves.acc[s - 1] - curves.acc[t - 1])
            gs.append(np.full(len(s), k))
    if not xs:
        width = len(_Curves({"val_acc": [0.5, 0.5]}).features(1, np.array([2]), source)[0])
        return np.empty((0, width)), np.empty(0), np.empty(0, dtype=int)
    return np.vstack(xs), np.concatenate(ys), np.concatenate(gs)


class FinalAccuracyForecaster(RegressorMixin, BaseEstimator):
    """Quantiles of a training's gain in val_acc from epoch t to epoch s (see the module docstring).

    ``fit(X, y)`` takes rows of `training_pairs`; ``predict`` the median gain; ``predict_quantiles`` one
    column per level of ``levels``; `prob_at_least` the forecast for histories directly.

    Args:
        source: ``curve`` or ``hybrid`` (curve + graph signature).
        method: ``quantile_gbm``, ``conformal`` or ``forest``.
        levels: the quantile levels forecast (sorted, in (0, 1)).
        max_iter, max_leaf_nodes, learning_rate: the gradient-boosting models' size.
        n_estimators: the forest's trees.
        folds: cross-conformal folds (``conformal``).
        seed: random state.
    """

    def __init__(self, source: str = "curve", method: str = "quantile_gbm", levels: Sequence[float] = LEVELS,
                 max_iter: int = 80, max_leaf_nodes: int = 15, learning_rate: float = 0.1,
                 n_estimators: int = 100, folds: int = 5, seed: int = 0) -> None:
        self.source = source
        self.method = method
        self.levels = levels
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.learning_rate = learning_rate
        self.n_estimators = n_estimators
        self.folds = folds
        self.seed = seed

    def _check(self) -> None:
        if self.source not in SOURCES:
            raise choice_error("forecast source", self.source, SOURCES, key="source")
        if self.method not in METHODS:
            raise choice_error("forecast method", self.method, METHODS, key="method")
        levels = list(self.levels)
        if not levels or levels != sorted(levels) or not all(0 < q < 1 for q in levels):
            raise EpochgraphError(f"levels={levels} must be increasing and inside (0, 1), e.g. {list(LEVELS)}")

    def _gbm(self, **kwargs: Any):
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(max_iter=self.max_iter, max_leaf_nodes=self.max_leaf_nodes,
                                             learning_rate=self.learning_rate, random_state=self.seed, **kwargs)

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None,
            groups: np.ndarray | None = None) -> FinalAccuracyForecaster:
        """Fit on pair rows (`training_pairs`); ``groups`` (the training of each row) for ``conformal``."""
        self._check()
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        if len(y) < 2:
            raise EpochgraphError(f"{len(y)} pair(s) of epochs to learn from; the forecaster needs at least 2 "
                                  f"(trainings that reached epoch 2)")
        self.levels_ = np.asarray(self.levels, dtype=float)
        if self.method == "quantile_gbm":
            self.models_ = [self._gbm(loss="quantile", quantile=float(q)).fit(X, y, sample_weight=sample_weight)
                            for q in self.levels_]
        elif self.method == "forest":
            from sklearn.ensemble import RandomForestRegressor

            forest = RandomForestRegressor(n_estimators=self.n_estimators, min_samples_leaf=5, oob_score=True,
                                           max_features=0.5, random_state=self.seed, n_jobs=1)
            forest.fit(X, y, sample_weight=sample_weight)
            resid = y - forest.oob_prediction_
            self.models_ = [forest]
            self.residuals_ = resid[np.isfinite(resid)]
        else:
            self._fit_conformal(X, y, groups)
        self.n_features_in_ = X.shape[1]
        return self

    def _fit_conformal(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> None:
        from mapie.regression import CrossConformalRegressor
        from sklearn.model_selection import GroupKFold, KFold

        # a two-sided interval at confidence c has its upper end at the (1 + c) / 2 quantile
        upper = self.levels_[self.levels_ > 0.5]
        confidence = [float(2 * q - 1) for q in upper]
        n_groups = len(np.unique(groups)) if groups is not None else len(y)
        folds = max(2, min(self.folds, n_groups))
        cv = GroupKFold(n_splits=folds) if groups is not None else KFold(folds, shuffle=True,
                                                                          random_state=self.seed)
        model = CrossConformalRegressor(self._gbm(), confidence_level=confidence, cv=cv, method="plus")
        model.fit_conformalize(X, y, groups=groups)
        self.models_ = [model]

    def predict_quantiles(self, X: np.ndarray) -> np.ndarray:
        """``[n, len(levels)]`` quantiles of the gain, non-decreasing along each row."""
        X = np.asarray(X, dtype=float)
        if self.method == "quantile_gbm":
            out = np.column_stack([m.predict(X) for m in self.models_])
        elif self.method == "forest":
            forest = self.models_[0]
            center = forest.predict(X)
            spread = np.quantile(self.residuals_, self.levels_) if self.residuals_.size else np.zeros(len(self.levels_))
            out = center[:, None] + spread[None, :]
        else:
            model = self.models_[0]
            point, intervals = model.predict_interval(X, aggregate_predictions="median")
            out = np.empty((len(X), len(self.levels_)))
            upper = self.levels_ > 0.5
            k = 0
            for j, q in enumerate(self.levels_):
                if q > 0.5:
                    out[:, j] = intervals[:, 1, k]
                    k += 1
            for j, q in enumerate(self.levels_):  # the lower ends mirror the upper ones around the point
                if q < 0.5:
                    mirror = np.flatnonzero(np.isclose(self.levels_, 1 - q) & upper)
                    out[:, j] = (intervals[:, 0, list(np.flatnonzero(upper)).index(mirror[0])] if mirror.size
                                 else point)
                elif q == 0.5:
                    out[:, j] = point
        return np.sort(out, axis=1)  # quantile crossing: sorting keeps each level's value range

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The median gain (or the level nearest 0.5)."""
        q = self.predict_quantiles(X)
        return q[:, int(np.argmin(np.abs(np.asarray(self.levels_) - 0.5)))]

    def prob_gain_at_least(self, X: np.ndarray, gains: np.ndarray, quantiles: np.ndarray | None = None) -> np.ndarray:
        """P(gain >= ``gains[i]``) for each row, from the forecast quantiles (linear between levels; below
        the lowest level and above the highest, half of the tail's mass); ``quantiles``: those of ``X``
        when already predicted."""
        q = self.predict_quantiles(X) if quantiles is None else quantiles
        levels = np.asarray(self.levels_)
        out = np.empty(len(q))
        for i, (row, g) in enumerate(zip(q, np.asarray(gains, dtype=float))):
            if g < row[0]:
                out[i] = 1.0 - levels[0] / 2
            elif g > row[-1]:
                out[i] = (1.0 - levels[-1]) / 2
            else:
                cdf = float(np.interp(g, row, levels)) if row[-1] > row[0] else levels[-1]
                out[i] = 1.0 - cdf
        return out

    # --- histories in, forecasts out ------------------------------------------------------------------

    def fit_histories(self, histories: Sequence[History], sample_weight_per_history: Sequence[float] | None = None,
                      max_epoch: int | None = None) -> FinalAccuracyForecaster:
        """Fit on every pair of epochs the ``histories`` reached."""
        X, y, g = training_pairs(histories, self._source(), max_epoch)
        w = None if sample_weight_per_history is None else np.asarray(sample_weight_per_history, dtype=float)[g]
        return self.fit(X, y, sample_weight=w, groups=g)

    def _source(self) -> str:
        if self.source not in SOURCES:
            raise choice_error("forecast source", self.source, SOURCES, key="source")
        return self.source

    def forecast(self, histories: Sequence[History], t: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        """``(val_acc at t, quantiles of val_acc at s)`` for each history, from its epochs 1..t."""
        X = np.vstack([pair_features(h, t, s, self._source()) for h in histories])
        now = X[:, 0]
        return now, now[:, None] + self.predict_quantiles(X)

    def prob_at_least(self, histories: Sequence[History], t: int, s: int, values: Sequence[float]) -> np.ndarray:
        """P(val_acc at epoch ``s`` >= ``values[i]``) for each history, from its epochs 1..t."""
        if s <= t:  # nothing left to forecast: the value is known
            return np.array([float(_Curves(h, t).acc[s - 1] >= v) for h, v in zip(histories, values)])
        X = np.vstack([pair_features(h, t, s, self._source()) for h in histories])
        return self.prob_gain_at_least(X, np.asarray(values, dtype=float) - X[:, 0])


def spearman_at(histories: Sequence[History], finals: Sequence[float], forecaster: FinalAccuracyForecaster,
                t: int, s: int) -> tuple[float, float]:
    """Spearman ρ of the forecast median at s and of val_acc at t with the final accuracies."""
    from scipy.stats import spearmanr

    keep = [i for i, h in enumerate(histories) if reached_epochs(h) >= t]
    hs = [histories[i] for i in keep]
    y = np.nan_to_num(np.asarray([finals[i] for i in keep], dtype=float))
    now, q = forecaster.forecast(hs, t, s)
    median = q[:, int(np.argmin(np.abs(forecaster.levels_ - 0.5)))]
    rho_f = spearmanr(median, y).statistic
    rho_c = spearmanr(now, y).statistic
    return (float(rho_f) if math.isfinite(rho_f) else 0.0, float(rho_c) if math.isfinite(rho_c) else 0.0)
