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
  epoch 1; log val_loss and log train_loss at t, train_acc at t and its gap to val_acc, for the metrics
  the study reports (``metrics``: a study that reports val_acc alone gets a val_acc-only model, never
  constants in place of missing losses); the horizon relative to the training's planned epochs T (t/T,
  s/T, (s - t)/T, log(s / t)), so that 15- and 500-epoch trainings share one model; and the planned LR
  schedule where the training declared it (``lr_schedule``: the LR now against the first, the LR at s
  against now, the share of epochs t+1..s after an LR drop, the epochs to the next drop / T), missing
  (NaN) where it did not;
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
MAX_ROWS = 200_000  # rows a fit learns from at most: scikit-learn's gradient boosting bins on this many
EARLY_STOPPING_ROWS = 10_000  # above this, scikit-learn's gradient boosting holds out rows for early stopping
MIN_VALUES = 10  # then a column is seen (learnt from) with at least this many values


CURVE_KEYS = ("val_acc", "val_loss", "train_acc", "train_loss")
SCHEDULE_KEY = "lr_schedule"  # in a history: the LR of every epoch 1..T, planned before the training
EPOCHS_KEY = "epochs"  # in a history: T, the epochs the training is planned for
DROP = 0.5  # an LR below this share of the current one counts as a drop to come


def _column(history: History, key: str, n: int) -> np.ndarray:
    values = list(history.get(key) or [])[:n]
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


def reported_metrics(history: History) -> tuple[str, ...]:
    """The learning-curve metrics a history reports (a value at some epoch), in `CURVE_KEYS` order."""
    return tuple(k for k in CURVE_KEYS if any(v is not None and math.isfinite(float(v))
                                              for v in (history.get(k) or [])))


def check_metrics(metrics: Sequence[str] | None) -> tuple[str, ...]:
    """``metrics`` in `CURVE_KEYS` order (None: all of them); val_acc is always one."""
    if metrics is None:
        return CURVE_KEYS
    unknown = [m for m in metrics if m not in CURVE_KEYS]
    if unknown:
        raise choice_error("curve metric", unknown[0], CURVE_KEYS, key="metrics")
    if "val_acc" not in metrics:
        raise EpochgraphError(f"metrics={list(metrics)} must include val_acc (the value the trials report)")
    return tuple(k for k in CURVE_KEYS if k in metrics)


def feature_names(source: str = "curve", metrics: Sequence[str] | None = None) -> list[str]:
    """The names of a pair's features (`pair_features`), in order."""
    metrics = check_metrics(metrics)
    names = ["val_acc", "best_val_acc", "val_acc_change_1", "val_acc_change_3", "val_acc_epoch_1"]
    if "val_loss" in metrics:
        names.append("log_val_loss")
    if "train_loss" in metrics:
        names.append("log_train_loss")
    if "train_acc" in metrics:
        names += ["train_acc", "train_val_gap"]
    if source == "hybrid":
        names += [f"{k}" for k in SIGNATURE_COLUMNS] + [f"{k}/change" for k in SIGNATURE_COLUMNS]
    return [*names, "t_frac", "s_frac", "span_frac", "log_s_over_t",
            "log_lr_now_vs_first", "log_lr_s_vs_now", "share_after_drop", "to_next_drop_frac"]


def describe_features(metrics: Sequence[str], declared: bool) -> str:
    """One line saying what a forecast reads (logged once per pruner)."""
    missing = [m for m in CURVE_KEYS if m not in metrics]
    reads = ", ".join(metrics) + (f" (the study reports no {', '.join(missing)})" if missing else "")
    schedule = ("the LR schedule each trial declared" if declared
                else "no LR schedule (none declared: its features are missing, the forecast is wider)")
    return f"forecast pruner: forecasting from {reads}, the horizon relative to the trial's epochs, and {schedule}"


class _Curves:
    """One training's per-epoch arrays (``[n]`` each), read once for all of its pairs.

    Only the ``metrics`` given become features (a metric the study does not report is left out, never
    filled in). The horizon is relative to the training's planned epochs T (``epochs`` in the history, else
    ``epochs`` given, else the epochs it reached), so one forecaster serves 15- and 500-epoch trainings. The
    planned LR schedule (``lr_schedule``), when the training declared it, gives the LR to come; without it
    those features are missing (NaN), which the gradient-boosting models learn to read as "not declared".
    """

    def __init__(self, history: History, n: int | None = None, metrics: Sequence[str] | None = None,
                 epochs: int | None = None) -> None:
        n = reached_epochs(history) if n is None else n
        self.n = n
        self.metrics = check_metrics(metrics)
        self.acc = np.nan_to_num(_column(history, "val_acc", n), nan=0.0)
        # a loss that is missing at one epoch stays missing (NaN); the models take NaN as missing
        self.val_loss = np.log(np.clip(_column(history, "val_loss", n), 1e-6, LOSS_CLIP))
        self.train_loss = np.log(np.clip(_column(history, "train_loss", n), 1e-6, LOSS_CLIP))
        self.train_acc = _column(history, "train_acc", n)
        self.best = np.maximum.accumulate(self.acc) if n else self.acc
        self.sig = np.column_stack([_column(history, k, n) for k in SIGNATURE_COLUMNS]) if n else np.empty((0, 10))
        planned = history.get(EPOCHS_KEY) or epochs
        schedule = history.get(SCHEDULE_KEY)
        self.T = int(planned) if planned else (len(schedule) if schedule else max(n, 1))
        lrs = np.asarray([float(v) for v in schedule], dtype=float) if schedule else None
        self.lr = lrs if lrs is not None and len(lrs) >= self.T and np.all(lrs > 0) else None

    def _schedule(self, t: int, s: np.ndarray) -> np.ndarray:
        """``[len(s), 4]``: LR now vs the first, LR at s vs now, share of (t, s] after a drop, epochs to the
        next drop (/T); NaN when the schedule was not declared."""
        if self.lr is None:
            return np.full((len(s), 4), np.nan)
        lr, now = self.lr, self.lr[t - 1]
        after = np.cumsum(lr < DROP * now)  # after[e-1]: epochs 1..e at an LR below the drop threshold
        drops = np.flatnonzero(lr[t:] < DROP * now)
        to_next = (drops[0] + 1) if drops.size else self.T + 1 - t
        si = s.astype(int)
        share = (after[si - 1] - after[t - 1]) / np.maximum(si - t, 1)
        return np.column_stack([np.full(len(s), np.log(now / lr[0])), np.log(lr[si - 1] / now), share,
                                np.minimum(to_next, si - t + 1) / self.T])

    def features(self, t: int, s: np.ndarray, source: str) -> np.ndarray:
        """``[len(s), n_features]``: the features of pairs (t, s) (1-based epochs, t <= self.n)."""
        i = t - 1
        acc = self.acc
        prev = acc[i - 1] if i >= 1 else acc[i]
        back3 = acc[max(0, i - 3)]
        head = [acc[i], self.best[i], acc[i] - prev, (acc[i] - back3) / max(1, min(3, i)), acc[0]]
        if "val_loss" in self.metrics:
            head.append(self.val_loss[i])
        if "train_loss" in self.metrics:
            head.append(self.train_loss[i])
        if "train_acc" in self.metrics:
            head += [self.train_acc[i], self.train_acc[i] - acc[i]]
        if source == "hybrid":
            sig = self.sig[i]
            dsig = sig - (self.sig[i - 1] if i >= 1 else sig)
            head = [*head, *np.sign(sig) * np.log1p(np.abs(sig)), *dsig]
        s = np.asarray(s, dtype=float)
        fixed = np.tile(np.asarray(head, dtype=float), (len(s), 1))
        T = float(self.T)
        horizon = np.column_stack([np.full(len(s), t / T), s / T, (s - t) / T, np.log(s / t)])
        return np.hstack([fixed, horizon, self._schedule(t, s)])


def pair_features(history: History, t: int, s: int, source: str = "curve", metrics: Sequence[str] | None = None,
                  epochs: int | None = None) -> np.ndarray:
    """The feature vector for forecasting val_acc at epoch ``s`` from epochs ``1..t`` of ``history``
    (``epochs``: the training's planned epochs T, when the history does not say)."""
    reached = reached_epochs(history)
    if reached < t:
        raise EpochgraphError(f"the history has {reached} epochs with a val_acc; a forecast from t={t} needs {t}")
    return _Curves(history, t, metrics, epochs).features(t, np.array([s]), source)[0]


def training_pairs(histories: Sequence[History], source: str = "curve", max_epoch: int | None = None,
                   metrics: Sequence[str] | None = None,
                   undeclared: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``X, y, groups`` for every pair (t < s) each training reached: features, the gain
    val_acc[s] - val_acc[t], and the training's index (for grouped cross-validation).

    With ``undeclared``, the pairs of a training that declared its schedule appear twice: with the schedule,
    and with it missing, as a study that does not declare one would see them (so a forecast without a
    schedule has learned what a schedule may bring later, e.g. the jump at an LR drop)."""
    xs, ys, gs = [], [], []
    for k, history in enumerate(histories):
        curves = _Curves(history, metrics=metrics)
        n = curves.n if max_epoch is None else min(curves.n, max_epoch)
        for t in range(1, n):
            s = np.arange(t + 1, n + 1)
            X = curves.features(t, s, source)
            y = curves.acc[s - 1] - curves.acc[t - 1]
            xs.append(X)
            ys.append(y)
            gs.append(np.full(len(s), k))
            if undeclared and curves.lr is not None:
                masked = X.copy()
                masked[:, -4:] = np.nan
                xs.append(masked)
                ys.append(y)
                gs.append(np.full(len(s), k))
    if not xs:
        width = len(feature_names(source, metrics))
        return np.empty((0, width)), np.empty(0), np.empty(0, dtype=int)
    return np.vstack(xs), np.concatenate(ys), np.concatenate(gs)


def _z_of(value: float, quantiles: np.ndarray, z: np.ndarray) -> float:
    """The normal score of ``value`` in a distribution given by ``quantiles`` at normal scores ``z``."""
    scale_floor = 1e-4  # accuracy points: quantiles that coincide still spread a little
    if len(quantiles) == 1:
        return float(z[0] + (value - quantiles[0]) / scale_floor)
    if value > quantiles[-1]:
        spread = max((quantiles[-1] - quantiles[-2]) / (z[-1] - z[-2]), scale_floor)
        return float(z[-1] + (value - quantiles[-1]) / spread)
    if value < quantiles[0]:
        spread = max((quantiles[1] - quantiles[0]) / (z[1] - z[0]), scale_floor)
        return float(z[0] - (quantiles[0] - value) / spread)
    k = int(np.searchsorted(quantiles, value, side="right")) - 1
    k = min(max(k, 0), len(quantiles) - 2)
    lo, hi = quantiles[k], quantiles[k + 1]
    if hi - lo < 1e-12:
        return float(z[k + 1] if value >= hi else z[k])
    return float(z[k] + (value - lo) / (hi - lo) * (z[k + 1] - z[k]))


def _usable_rows(X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None, groups: np.ndarray | None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The rows a fit learns from: a finite target, a positive finite weight (with ``sample_weight``), and at
    most `MAX_ROWS` of them (a random subset).

    scikit-learn's gradient boosting finds each column's bins on its values in rows of non-zero weight, and on
    a random 200,000 of the rows when there are more: a column whose values all sit outside those rows (the
    LR schedule, declared by a few warm trainings among the pairs of 500-epoch ones) leaves it no value, and
    `HistGradientBoostingRegressor.fit` raises ("window shape cannot be larger than input array shape").
    Dropping the rows of weight 0 and drawing the subset here, before the columns without a value are found
    (`FinalAccuracyForecaster.unseen_`), makes the binning see what the fit sees. Infinite features (an
    overflowing loss) become missing (NaN), which the models read as missing."""
    keep = np.isfinite(y)
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=float)
        if sample_weight.shape != y.shape:
            raise EpochgraphError(f"sample_weight has {sample_weight.size} value(s) for {y.size} row(s); "
                                  f"give one weight per row")
        keep &= np.isfinite(sample_weight) & (sample_weight > 0)
    rows = np.flatnonzero(keep)
    if len(rows) > MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_ROWS, replace=False))
    if len(rows) < 2:
        raise EpochgraphError(f"{len(rows)} pair(s) of epochs with a finite gain and a positive weight to learn "
                              f"from; the forecaster needs at least 2 (trainings that reached epoch 2)")
    if len(rows) < len(y):
        X, y = X[rows], y[rows]
        sample_weight = None if sample_weight is None else sample_weight[rows]
        groups = None if groups is None else np.asarray(groups)[rows]
    X = np.where(np.isinf(X), np.nan, X)
    return X, y, sample_weight, groups


class FinalAccuracyForecaster(RegressorMixin, BaseEstimator):
    """Quantiles of a training's gain in val_acc from epoch t to epoch s (see the module docstring).

    ``fit(X, y)`` takes rows of `training_pairs`; ``predict`` the median gain; ``predict_quantiles`` one
    column per level of ``levels``; `prob_at_least` the forecast for histories directly.

    Args:
        source: ``curve`` or ``hybrid`` (curve + graph signature).
        metrics: the learning-curve metrics the features read (`CURVE_KEYS`; None: all four); a study
            that reports val_acc alone gets ``("val_acc",)``.
        method: ``quantile_gbm``, ``conformal`` or ``forest``.
        levels: the quantile levels forecast (sorted, in (0, 1)).
        max_iter, max_leaf_nodes, learning_rate: the gradient-boosting models' size.
        n_estimators: the forest's trees.
        folds: cross-conformal folds (``conformal``).
        seed: random state.
    """

    def __init__(self, source: str = "curve", method: str = "quantile_gbm", levels: Sequence[float] = LEVELS,
                 max_iter: int = 80, max_leaf_nodes: int = 15, learning_rate: float = 0.1,
                 n_estimators: int = 100, folds: int = 5, seed: int = 0,
                 metrics: Sequence[str] | None = None) -> None:
        self.source = source
        self.metrics = metrics
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
        check_metrics(self.metrics)
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
        X, y, sample_weight, groups = _usable_rows(X, y, sample_weight, groups, self.seed)
        # a feature without a value in any row that carries weight (no training declared a schedule) has nothing
        # to learn, and scikit-learn's binning cannot take a column without values: it is set to 0, here and
        # when predicting
        # when it holds out 10 % of more than 10,000 rows for early stopping, the bins are found on the rest:
        # a column with a few values could lose them all there, so such a column needs MIN_VALUES of them
        need = MIN_VALUES if len(y) > EARLY_STOPPING_ROWS else 1
        self.unseen_ = np.flatnonzero(np.isfinite(X).sum(axis=0) < need)
        X = self._seen(X)
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
        names = feature_names(self.source, self.metrics)
        self.feature_names_ = names if len(names) == X.shape[1] else None
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

    def _seen(self, X: np.ndarray) -> np.ndarray:
        X = np.where(np.isinf(X), np.nan, np.asarray(X, dtype=float))  # an infinite feature is missing, as in fit
        unseen = getattr(self, "unseen_", None)
        if unseen is not None and len(unseen):
            X[:, unseen] = 0.0
        return X

    def predict_quantiles(self, X: np.ndarray) -> np.ndarray:
        """``[n, len(levels)]`` quantiles of the gain, non-decreasing along each row."""
        X = self._seen(np.asarray(X, dtype=float))
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
        """P(gain >= ``gains[i]``) for each row: the predictive distribution through the forecast quantiles.

        Between two levels the CDF is interpolated on the normal scale (linear in z = Φ⁻¹(level)); beyond the
        outermost levels it continues as the normal tail whose scale the two outermost quantiles on that side
        give. So the probability is continuous and strictly decreasing in the gain asked for, not a step
        between a few levels; ``quantiles``: those of ``X`` when already predicted."""
        from scipy.stats import norm

        q = self.predict_quantiles(X) if quantiles is None else quantiles
        levels = np.asarray(self.levels_, dtype=float)
        z = norm.ppf(levels)
        gains = np.asarray(gains, dtype=float)
        out = np.empty(len(q))
        for i, (row, g) in enumerate(zip(q, gains)):
            out[i] = norm.sf(_z_of(g, row, z))
        return out

    # --- histories in, forecasts out ------------------------------------------------------------------

    def fit_histories(self, histories: Sequence[History], sample_weight_per_history: Sequence[float] | None = None,
                      max_epoch: int | None = None) -> FinalAccuracyForecaster:
        """Fit on every pair of epochs the ``histories`` reached."""
        X, y, g = training_pairs(histories, self._source(), max_epoch, self.metrics)
        w = None if sample_weight_per_history is None else np.asarray(sample_weight_per_history, dtype=float)[g]
        return self.fit(X, y, sample_weight=w, groups=g)

    def _source(self) -> str:
        if self.source not in SOURCES:
            raise choice_error("forecast source", self.source, SOURCES, key="source")
        return self.source

    def forecast(self, histories: Sequence[History], t: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        """``(val_acc at t, quantiles of val_acc at s)`` for each history, from its epochs 1..t."""
        X = np.vstack([pair_features(h, t, s, self._source(), self.metrics) for h in histories])
        now = X[:, 0]
        return now, now[:, None] + self.predict_quantiles(X)

    def prob_at_least(self, histories: Sequence[History], t: int, s: int, values: Sequence[float]) -> np.ndarray:
        """P(val_acc at epoch ``s`` >= ``values[i]``) for each history, from its epochs 1..t."""
        if s <= t:  # nothing left to forecast: the value is known
            return np.array([float(_Curves(h, t).acc[s - 1] >= v) for h, v in zip(histories, values)])
        X = np.vstack([pair_features(h, t, s, self._source(), self.metrics) for h in histories])
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
