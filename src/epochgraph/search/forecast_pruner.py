"""`ForecastPruner`: stop a trial when it can no longer beat the best trial so far (predictive termination).

At every epoch from ``min_epoch`` on, the pruner forecasts the trial's final val_acc with its uncertainty
(`epochgraph.forecast.forecaster.FinalAccuracyForecaster`) and prunes when P(final >= best completed value) < ``delta``,
the rule of Domhan et al. 2015 (δ = 0.05 in their code) and of Baker et al. 2017.

The forecaster starts *warm*, from recorded populations (``warm_start``: population tables, e.g.
``bench/results/populations/*.parquet``, or a registered forecaster ``models:/...``), so the study prunes
from its second trial on; and it is refitted *online* on the study's own finished trials, pruned ones
included (their partial curves are pairs of epochs too), whose rows weigh ``own_weight`` times a warm
row, so the study's own trials can overrule a prior from other networks.

With ``base`` (any Optuna pruner), the forecast works with that pruner: ``combine="and"`` prunes only
when both agree (the forecast vetoes the base pruner's prunes of trials that may still win), ``"or"``
prunes when either says so (the forecast prunes earlier than the base pruner).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from epochgraph.errors import EpochgraphError
from epochgraph.forecast.forecaster import (
    SCHEDULE_KEY,
    FinalAccuracyForecaster,
    History,
    describe_features,
    feature_names,
    pair_features,
    reported_metrics,
    training_pairs,
)
from epochgraph.forecast.recalibration import Recalibration, fit_recalibration
from epochgraph.forecast.registry import fit_forecaster, load_forecaster, log_forecaster  # noqa: F401 (importable here too)
from epochgraph.forecast.warm_cache import disk_cached, tables_digest
from epochgraph.forecast.warm_start import (  # noqa: F401 (importable here too)
    as_list,
    warm_histories,
    warm_populations,
    warm_tables,
    with_plan,
)
from epochgraph.search.online_calibration import conformal_margin
from epochgraph.search.pause import should_resume, stops_for_good
from epochgraph.search.trial_attrs import (
    diverged,
    mark_paused,
    planned_epochs,
    planned_schedule,
    resumed_trials,
    trial_history,
    with_reported_values,
    write_forecast,
)
from epochgraph.search.undecided import undecided

log = logging.getLogger("epochgraph")
COMBINE = ("and", "or")
_WARM_CACHE: dict[Any, tuple[np.ndarray, ...]] = {}  # one read of the warm tables per process: X, y, training
_PRIOR_CACHE: dict[Any, FinalAccuracyForecaster] = {}  # the forecaster fitted on the warm pairs alone
_RECAL_CACHE: dict[Any, Recalibration] = {}  # the recalibration of P learnt on the warm populations
_THREADPOOLS: Any = None  # threadpoolctl's controller, made at the first forecast


class ForecastPruner(BasePruner):
    """Prune a trial when P(its final val_acc >= the best completed value) < ``delta`` (module docstring).

    Example::

        pruner = ForecastPruner(max_epoch=15, warm_start="bench/results/populations")
        study = optuna.create_study(direction="maximize", pruner=pruner)

    Args:
        max_epoch: the epoch whose val_acc is the trial's value (the training's last epoch).
        delta: prune when P(final >= best so far) is below this (0 < delta < 1).
        min_epoch: the first epoch at which the forecast may prune.
        warm_start: population tables (files or folders) and/or registered forecasters (``models:/...``).
        warm_experiments, warm_exclude: which populations of the tables to use / leave out.
        source, method, forecaster_params: the `FinalAccuracyForecaster` (``curve`` / ``hybrid``;
            ``quantile_gbm`` / ``conformal`` / ``forest``).
        own_weight: weight of a pair from the study's own trials against a warm one (rounded: its rows are
            repeated).
        warm_rows: at most this many warm pairs (a random subset) enter each refit.
        min_trials: without a warm start, finished trials needed before the first fit.
        refit_growth: refit once the finished trials grew by this factor (and by 5) since the last fit.
        base: an Optuna pruner to combine with (``combine``: ``and`` = veto, ``or`` = prune earlier).
        calibrate: widen the forecast by the study's own completed trials' residuals
            (`calibration_margin`, online split-conformal).
        min_rank_corr, min_complete: the forecast may prune at a step only once ``min_complete`` trials of the
            study completed and their val_acc at that step ranks their final values at Spearman ρ >=
            ``min_rank_corr`` (`rank_corr`), ρ taken ``rank_z`` standard errors below its estimate (Fisher's z):
            where the study shows that early epochs do not rank the end (a late LR drop, slow starters that
            finish best), it waits, whatever the warm start believed.
        rank_top: ρ is taken over this share of the completed trials, those with the best final values (1: all).
            What pruning must get right is the order among the contenders: chance-level and diverged trials
            are ranked by any epoch and would vouch for an epoch that does not order the best ones.
        min_progress: the forecast may prune only from epoch ``min_progress * max_epoch`` on (it forecasts and
            records before): however well early epochs seemed to rank, a share of every training is trained.
        recalibrate: report P(final >= best) through the `Recalibration` learnt on the warm populations, each
            forecast by a forecaster fitted without it (the identity without warm tables). The prune rule
            does not change: the forecast's own P < ``delta``, i.e. its calibrated upper bound (quantile
            1 - ``delta``) below the best; the recalibrated P is what is recorded and shown.
        pause: a prune is a pause, which `should_resume` may undo: the forecast prunes without waiting for the
            rank check (a wrong pause costs the epochs a resume repeats none of; a wrong prune loses the trial).
        promote_eta, resume_top: when a paused trial resumes (`epochgraph.search.pause.should_resume`).
        seed: the forecaster's and the subsample's random state.
    """

    def __init__(self, max_epoch: int, delta: float = 0.05, min_epoch: int = 1,
                 warm_start: str | Sequence[str] | None = None, warm_experiments: Sequence[str] | None = None,
                 warm_exclude: Sequence[str] | None = None, source: str = "curve", method: str = "quantile_gbm",
                 forecaster_params: Mapping[str, Any] | None = None, own_weight: float = 3.0,
                 warm_rows: int = 3000, min_trials: int = 4, refit_growth: float = 1.5,
                 base: BasePruner | None = None, combine: str = "and", calibrate: bool = True,
                 min_rank_corr: float | None = 0.5, min_complete: int = 6, rank_z: float = 2.326,
                 rank_top: float = 1.0, min_progress: float = 0.0, recalibrate: bool = True,
                 pause: bool = False, promote_eta: float = 3.0, resume_top: int = 3, seed: int = 0) -> None:
        if int(max_epoch) < 2:
            raise ValueError(f"max_epoch={max_epoch} must be >= 2 (the training's last epoch, trainer.epochs)")
        if not 0 < delta < 1:
            raise ValueError(f"delta={delta} must be in (0, 1), e.g. 0.05")
        if int(min_epoch) < 1:
            raise ValueError(f"min_epoch={min_epoch} must be >= 1")
        if combine not in COMBINE:
            raise ValueError(f"combine={combine!r} must be one of {COMBINE} (and: veto the base pruner's prunes, "
                             f"or: prune when either says so)")
        if base is not None and not isinstance(base, BasePruner):
            raise TypeError(f"base={base!r} must be an Optuna pruner (optuna.pruners.BasePruner)")
        if own_weight <= 0 or warm_rows < 0 or min_trials < 2 or refit_growth <= 1:
            raise ValueError(f"own_weight={own_weight} must be > 0, warm_rows={warm_rows} >= 0, "
                             f"min_trials={min_trials} >= 2 and refit_growth={refit_growth} > 1")
        self.max_epoch, self.delta, self.min_epoch = int(max_epoch), float(delta), int(min_epoch)
        self.source, self.method, self.seed = source, method, int(seed)
        self.forecaster_params = dict(forecaster_params or {})
        self._template()._check()  # a bad source or method fails now, not at the first prune
        self.own_weight, self.warm_rows = float(own_weight), int(warm_rows)
        self.min_trials, self.refit_growth = int(min_trials), float(refit_growth)
        self.base, self.combine, self.calibrate = base, combine, bool(calibrate)
        if (min_rank_corr is not None and not -1 <= min_rank_corr <= 1) or int(min_complete) < 2:
            raise ValueError(f"min_rank_corr={min_rank_corr} must be in [-1, 1] (or None: no rank check) and "
                             f"min_complete={min_complete} >= 2")
        self.min_rank_corr = None if min_rank_corr is None else float(min_rank_corr)
        if not 0 < rank_top <= 1:
            raise ValueError(f"rank_top={rank_top} must be in (0, 1]: the share of the completed trials, best first, "
                             f"whose ranking is checked (1: all)")
        self.min_complete, self.rank_z, self.rank_top = int(min_complete), float(rank_z), float(rank_top)
        if not 0 <= min_progress < 1:
            raise ValueError(f"min_progress={min_progress} must be in [0, 1): the share of max_epoch trained before "
                             f"the forecast may prune (0: from min_epoch)")
        self.min_progress, self.recalibrate, self.pause = float(min_progress), bool(recalibrate), bool(pause)
        self.promote_eta, self.resume_top = float(promote_eta), int(resume_top)
        self._recalibration: Recalibration | None = None
        self._ranks: tuple[int, dict[int, float]] = (-1, {})  # completed trials -> {step: Spearman rho}
        self.warm_start = as_list(warm_start)
        self._warm_key = (tuple(self.warm_start), tuple(warm_experiments or ()), tuple(warm_exclude or ()),
                          self.source, self.warm_rows, self.seed)
        self._load_warm(self.warm_start, warm_experiments, warm_exclude or [])
        self._metrics: tuple[str, ...] | None = None  # what the study reports, from its first forecast
        self._warm: tuple[np.ndarray, np.ndarray] | None = None
        self._model: FinalAccuracyForecaster | None = None
        self._fitted_on = -1  # finished trials at the last fit (-1: never)
        self._histories: dict[int, History] = {}  # finished trial number -> history (they do not change)
        # what the last call forecast for each trial (a replay's or a test's view): what the job, the callback
        # and other workers read is what `prune` wrote into the trial itself (`write_forecast`)
        self.last_forecast: dict[int, float] = {}  # trial number -> P(final >= best), recalibrated
        self.last_forecast_value: dict[int, float] = {}  # trial number -> forecast median final val_acc
        self.last_forecast_upper: dict[int, float] = {}  # trial number -> uncalibrated upper quantile
        self.last_forecast_bound: dict[int, float] = {}  # trial number -> calibrated upper bound, as compared
        self.last_forecast_best: dict[int, float] = {}  # trial number -> the best completed value it was compared with
        self.last_forecast_rule: dict[int, float] = {}  # trial number -> the forecast's own P, which the rule reads
        self.last_decision: dict[int, str] = {}  # trial number -> what was decided and why, in words
        self._uppers: dict[int, dict[int, float]] = {}  # trial number -> epoch -> upper quantile forecast then

    def _template(self) -> FinalAccuracyForecaster:
        # the probability needs the predictive distribution around the rule's quantile 1 - delta: the
        # median, the quartile-like 0.1 and 0.9 levels and 1 - delta (prob_gain_at_least continues the tails);
        # four small quantile models keep each refit around a second
        levels = tuple(sorted({0.1, 0.5, 0.9, round(1.0 - self.delta, 6)}))
        params = {"levels": levels, "max_iter": 30, "max_leaf_nodes": 10, **self.forecaster_params}
        return FinalAccuracyForecaster(source=self.source, method=self.method, seed=self.seed,
                                       metrics=self._metrics if getattr(self, "_metrics", None) else None, **params)

    def _load_warm(self, sources: Sequence[str], experiments: Sequence[str] | None, exclude: Sequence[str]) -> None:
        """Read the warm tables and registered forecasters now, so a bad source fails at construction; their
        pairs of epochs are made at the first forecast, for the metrics the study reports."""
        tables = [s for s in sources if not s.startswith("models:/")]
        self._warm_tables = (tuple(tables), tuple(experiments or ()), tuple(exclude))
        digest = tables_digest(warm_tables(tables)) if tables else None  # the tables' contents, hashed once
        warm = warm_populations(tables, experiments, exclude, digest) if tables else []
        # what the warm start's results on disk are keyed by: the tables' contents and the selection
        self._warm_content = {"tables": digest,
                              "experiments": sorted(experiments or ()), "exclude": sorted(exclude),
                              "source": self.source, "rows": self.warm_rows, "seed": self.seed}
        self._warm_histories = [h for _, h in warm]
        self._warm_names = [name for name, _ in warm]
        self._registered = []
        for uri in (s for s in sources if s.startswith("models:/")):
            registered = load_forecaster(uri)
            if registered.source != self.source:
                raise EpochgraphError(f"{uri} was fitted on source={registered.source!r}, the pruner reads "
                                      f"source={self.source!r}; set pruner.source={registered.source}")
            self._registered.append((uri, registered))

    def _table_pairs(self) -> tuple[np.ndarray, ...]:
        """``X, y, training`` of every pair of epochs of the warm tables, with the study's features (`_metrics`);
        one computation per process."""
        key = (self._warm_tables, self.source, self._metrics)
        if key not in _WARM_CACHE:
            _WARM_CACHE[key] = training_pairs(self._warm_histories, self.source, None, self._metrics)
        return _WARM_CACHE[key]

    def _warm_pairs(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The warm rows each refit takes (`warm_rows` of the warm pairs, a random subset), with the study's
        features; kept on disk when they come from the tables alone (`epochgraph.forecast.warm_cache`)."""
        if self._warm_histories and not self._registered:
            return disk_cached("warm_rows", {**self._warm_content, "metrics": self._metrics},
                               lambda: self._subset(*self._table_pairs()[:2]))
        parts_x, parts_y = [], []
        if self._warm_histories:
            parts_x.append(self._table_pairs()[0])
            parts_y.append(self._table_pairs()[1])
        want = feature_names(self.source, self._metrics)
        for uri, registered in self._registered:
            if getattr(registered, "feature_names_", None) != want:
                raise EpochgraphError(f"{uri} was fitted on other features than this study reports "
                                      f"({', '.join(self._metrics or ())}); refit it on such curves or drop it "
                                      f"from pruner.warm_start")
            parts_x.append(registered.train_X_)
            parts_y.append(registered.train_y_)
        if not parts_x:
            return None
        return self._subset(np.vstack(parts_x), np.concatenate(parts_y))

    def _subset(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(y) > self.warm_rows:
            pick = np.random.default_rng(self.seed).choice(len(y), self.warm_rows, replace=False)
            X, y = X[pick], y[pick]
        return X, y

    def _history(self, trial: FrozenTrial, history: History | None = None) -> dict[str, Any]:
        """The trial's per-epoch history (val_acc completed from its intermediate values where its records lack
        it) with its planned epochs and the LR schedule it declared."""
        history = with_reported_values(trial_history(trial) if history is None else history, trial)
        return with_plan(history, self._planned(trial), planned_schedule(trial))

    def _planned(self, trial: FrozenTrial) -> int:
        """The trial's own planned epochs where it declared them (`planned_epochs`), else ``max_epoch``."""
        return planned_epochs(trial) or self.max_epoch

    def _use_metrics(self, history: History) -> None:
        """Fix the features at the first forecast: the curve metrics the study reports, and only those."""
        if self._metrics is not None:
            return
        self._metrics = reported_metrics(history) or ("val_acc",)
        if "val_acc" not in self._metrics:
            self._metrics = ("val_acc", *self._metrics)
        self._warm = self._warm_pairs()
        log.info(describe_features(self._metrics, bool(history.get(SCHEDULE_KEY))))

    # --- the forecaster -------------------------------------------------------------------------------

    def _finished(self, study: optuna.Study) -> list[History]:
        resumed = resumed_trials(study) if self.pause else {}
        for tr in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if tr.number in resumed:  # its epochs go on in the trial that resumed it
                self._histories.pop(tr.number, None)
            elif tr.number not in self._histories:
                self._histories[tr.number] = self._history(tr)
        return list(self._histories.values())

    def forecaster(self, study: optuna.Study) -> FinalAccuracyForecaster | None:
        """The forecaster for ``study`` now: warm, refitted on its finished trials as they grow."""
        finished = self._finished(study)
        n = len(finished)
        # refits grow geometrically apart (a few per study), at least 3 trials apart: each costs ~1 s
        due = self._model is None or (n >= self.min_trials
                                      and n >= max(self._fitted_on * self.refit_growth, self._fitted_on + 5))
        if not due:
            return self._model
        X_own, y_own, _ = training_pairs(finished, self.source, None, self._metrics)
        if self._warm is None and (n < self.min_trials or len(y_own) < 2):
            return None
        if not len(y_own) and self._warm is not None:  # the warm prior alone: the same for every study
            key = (self._warm_key, repr(sorted(self._template().get_params().items())))
            if key not in _PRIOR_CACHE:
                _PRIOR_CACHE[key] = self._fit_prior()
            self._model, self._fitted_on = _PRIOR_CACHE[key], n
            return self._model
        # the own rows' weight by repetition: scikit-learn's weighted binning is many times slower
        reps = max(1, round(self.own_weight))
        xs, ys = [np.repeat(X_own, reps, axis=0)], [np.repeat(y_own, reps)]
        if self._warm is not None:
            Xw, yw = self._warm
            xs.append(Xw)
            ys.append(yw)
        model = self._template().fit(np.vstack(xs), np.concatenate(ys))
        self._model, self._fitted_on = model, n
        return model

    def _fit_prior(self) -> FinalAccuracyForecaster:
        """The forecaster fitted on the warm rows alone (kept on disk when they come from the tables alone)."""
        if self._registered:
            return self._template().fit(*self._warm)
        params = repr(sorted(self._template().get_params().items()))
        return disk_cached("warm_prior", {**self._warm_content, "metrics": self._metrics, "template": params},
                           lambda: self._template().fit(*self._warm))

    def prob_beat_best(self, study: optuna.Study, trial: FrozenTrial, history: History | None = None,
                       recalibrated: bool = True) -> float | None:
        """P(the trial's final val_acc >= the best completed value); see `_prob_beat_best` (``history``: the
        trial's, when already read; ``recalibrated``: through `recalibration`, else the forecast's own)."""
        global _THREADPOOLS
        if _THREADPOOLS is None:
            from threadpoolctl import ThreadpoolController

            _THREADPOOLS = ThreadpoolController()  # inspecting the loaded libraries once, not per call
        # one thread for scikit-learn's OpenMP: beside a training (or on a busy machine) its threads
        # spin-wait, and one small prediction takes many times longer
        with _THREADPOOLS.limit(limits=1, user_api="openmp"):
            p = self._prob_beat_best(study, trial, trial_history(trial) if history is None else history)
            if p is None:
                return None
            recalibration = self.recalibration()  # learnt at the first forecast, under the same thread limit
            return float(recalibration(p)) if recalibrated else p

    def recalibration(self) -> Recalibration:
        """The map from the forecast's P(final >= best) to the one reported (`recalibrate`): learnt once per
        process and warm start, at the first forecast (`epochgraph.forecast.recalibration`)."""
        if self._recalibration is not None:
            return self._recalibration
        if not (self.recalibrate and self._warm_histories and self._metrics):
            return Recalibration()
        key = (self._warm_key, self._metrics, repr(sorted(self._template().get_params().items())))
        if key not in _RECAL_CACHE:
            _RECAL_CACHE[key] = r = disk_cached(
                "recalibration", {**self._warm_content, "metrics": self._metrics, "template": key[2]},
                lambda: fit_recalibration(self._warm_histories, self._warm_names, self._table_pairs(), self._template,
                                          self.source, self._metrics, rows=self.warm_rows, seed=self.seed))
            log.info(f"forecast pruner: P(final >= best) recalibrated on {r.points} forecasts of trainings held "
                     f"out of the fit (logit slope {r.slope:.2f}, intercept {r.intercept:.2f}); the prune rule, the "
                     f"forecast's own P < {self.delta:g}, is a recalibrated P < {float(r(self.delta)):.3f}")
        self._recalibration = _RECAL_CACHE[key]
        return self._recalibration

    def _prob_beat_best(self, study: optuna.Study, trial: FrozenTrial, history: History) -> float | None:
        """P(the trial's final val_acc >= the best completed value) at its last epoch, or None when no
        forecast is due (before ``min_epoch``, at the last epoch, no completed trial, no forecaster)."""
        step = trial.last_step
        T = self._planned(trial)
        if step is None or step < self.min_epoch or step >= T:
            return None
        values = [tr.value for tr in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if tr.value is not None and math.isfinite(tr.value)]
        history = self._history(trial, history)  # val_acc alone where the objective only calls trial.report
        self._use_metrics(history)
        model = self.forecaster(study)
        if model is None:
            return None
        x = pair_features(history, step, T, self.source, self._metrics, T)[None, :]
        now = float(x[0, 0])
        q = model.predict_quantiles(x)  # one prediction serves both the median and P(final >= best)
        upper = now + float(q[0, int(np.argmin(np.abs(model.levels_ - (1.0 - self.delta))))])  # level 1 - delta
        # recorded for every trial at every step, the first ones (no incumbent yet) and those the base pruner
        # keeps included: the calibration's residuals must not come from the survivors of pruning alone
        self._uppers.setdefault(trial.number, {})[step] = upper
        self.last_forecast_upper[trial.number] = upper
        margin = self.calibration_margin(study, step) if self.calibrate else 0.0
        # the forecast shown beside the curve, also while there is no incumbent to beat
        self.last_forecast_value[trial.number] = now + margin + float(
            q[0, int(np.argmin(np.abs(model.levels_ - 0.5)))])
        self.last_forecast_bound[trial.number] = upper + margin
        if not values:
            return None
        best = max(values) if study.direction == StudyDirection.MAXIMIZE else min(values)
        self.last_forecast_best[trial.number] = best
        return float(model.prob_gain_at_least(x, np.array([best - now - margin]), quantiles=q)[0])

    def rank_corr(self, study: optuna.Study, step: int) -> float | None:
        """Spearman ρ between val_acc at ``step`` and the final value, over the study's completed trials (the
        ``rank_top`` share of them with the best finals); None while fewer than ``min_complete`` completed, -1
        while fewer than ``min_complete`` are checked or the values tie. A few completed trials can rank
        perfectly by chance (5 of them did on the 50-epoch ResNets, whose early epochs rank the population far
        less well): ``rank_z`` and ``min_complete`` say how much evidence the check asks for."""
        done = [tr for tr in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if tr.value is not None and math.isfinite(tr.value)]
        if len(done) < self.min_complete:
            return None
        n, cache = self._ranks
        if n != len(done):
            cache = {}
            self._ranks = (len(done), cache)
        if step not in cache:
            from scipy.stats import spearmanr

            pairs = [(tr.intermediate_values[step], tr.value) for tr in done if step in tr.intermediate_values]
            if self.rank_top < 1:  # the contenders: the best finals (by maximise/minimise)
                pairs.sort(key=lambda p: p[1], reverse=study.direction == StudyDirection.MAXIMIZE)
                pairs = pairs[:math.ceil(self.rank_top * len(pairs))]
            rho = spearmanr(*zip(*pairs)).statistic if len(pairs) >= self.min_complete else math.nan
            cache[step] = float(rho) if math.isfinite(rho) else -1.0  # ties everywhere: no ranking at all
        return cache[step]

    def trusted_at(self, study: optuna.Study, step: int) -> bool:
        """Whether the study's own completed trials show that ``step`` ranks the final values (see __init__), from
        ``min_progress`` of ``max_epoch`` on."""
        return step >= self.min_progress * self.max_epoch and self.ranks_end(study, step)

    def ranks_end(self, study: optuna.Study, step: int) -> bool:
        """The rank check alone: whether the completed trials' val_acc at ``step`` ranks their final values."""
        if self.min_rank_corr is None:
            return True
        rho = self.rank_corr(study, step)
        if rho is None:
            return False
        n = math.ceil(self.rank_top * self._ranks[0])  # the completed trials whose ranking was checked
        low = math.tanh(math.atanh(min(max(rho, -0.999999), 0.999999)) - self.rank_z / math.sqrt(max(n - 3, 1)))
        return low >= self.min_rank_corr

    def calibration_margin(self, study: optuna.Study, step: int) -> float:
        """How far the forecast's upper quantile fell short for this study's completed trials at ``step``
        (`epochgraph.search.online_calibration.conformal_margin`)."""
        return conformal_margin(study, step, self._uppers, self.delta)

    def should_resume(self, study: optuna.Study, trial: FrozenTrial, last_pass: bool = False) -> bool:
        """Whether paused ``trial`` should go on now (`epochgraph.search.pause.should_resume`: this pruner's rule)."""
        return should_resume(self, study, trial, last_pass)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        self._forget(trial.number)  # what is recorded for this epoch is what this call forecasts
        decision = self._decide(study, trial)
        n = trial.number
        if trial.last_step is not None and (n in self.last_forecast or n in self.last_forecast_value):
            write_forecast(study, trial, int(trial.last_step), {
                "probability": self.last_forecast.get(n), "final": self.last_forecast_value.get(n),
                "upper": self.last_forecast_bound.get(n), "best": self.last_forecast_best.get(n),
                "rule": self.last_forecast_rule.get(n)}, upper=self.last_forecast_upper.get(n), accuracy=True,
                decision=self.last_decision.get(n))
        if decision and self.pause and trial.last_step is not None:  # for the job (a checkpoint), the sweeper
            mark_paused(study, trial, None if stops_for_good(trial) else int(trial.last_step))
        return decision

    def _forget(self, number: int) -> None:
        for made in (self.last_forecast, self.last_forecast_value, self.last_forecast_bound, self.last_forecast_upper,
                     self.last_forecast_best, self.last_forecast_rule, self.last_decision):
            made.pop(number, None)

    def _decide(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        history = trial_history(trial)
        n = trial.number
        if history and diverged(history):
            self.last_forecast[n], self.last_decision[n] = 0.0, "stopped for good: the training diverged"
            return True
        base = self.base.prune(study, trial) if self.base is not None else None
        try:
            p = self.prob_beat_best(study, trial, history, recalibrated=False)  # also with nothing to veto: recorded
            if p is not None:
                self.last_forecast[n], self.last_forecast_rule[n] = float(self.recalibration()(p)), p
                step = int(trial.last_step)  # a pause waits for min_progress only; a prune for the rank check too
                said = (f"P {p:.3f} {'<' if p < self.delta else '≥'} δ {self.delta:g}: bound "
                        f"{self.last_forecast_bound[n]:.3f} vs best {self.last_forecast_best[n]:.3f}")
                # (pausing before min_progress where the rank check passed lost the best trial: the completed trials
                # of a pausing study are the survivors of its pauses, and vouch for early epochs they should not)
                if step < self.min_progress * self._planned(trial) or (
                        not self.pause and not self.trusted_at(study, step)):
                    p = None  # the study has not shown that this epoch ranks the end: no prune from the forecast
                    said = f"kept: the rank check is closed at epoch {step} ({said})"
                verb = "paused" if self.pause else "pruned"
                self.last_decision[n] = said if p is None else f"{verb if p < self.delta else 'kept'}: {said}"
        except Exception as err:  # a model that cannot be fitted or asked never stops the user's training
            self._forget(trial.number)
            undecided(self, study, trial, err)
            p = None
        if base is None:
            return p is not None and p < self.delta
        if p is None:  # no forecast (before min_epoch, no incumbent): "and" keeps the trial, "or" asks the base
            return bool(base) and self.combine == "or"
        return (base and p < self.delta) if self.combine == "and" else (base or p < self.delta)
