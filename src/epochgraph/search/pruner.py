"""`SignaturePruner`: stop trials whose rolled-graph signature forecasts a low final accuracy."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from epochgraph.forecast.predictor import FeatureSpec, LabelRule, SignaturePredictor, load_predictor
from epochgraph.graph.centrality import CENTRALITIES
from epochgraph.search.trial_attrs import diverged, trial_history, write_forecast
from epochgraph.search.undecided import undecided


class SignaturePruner(BasePruner):
    """Prune a trial when its temporal graph signature forecasts a low final accuracy.

    At each epoch in ``check_epochs`` the pruner builds the trial's features from its user attrs
    (written each epoch by `epochgraph.search.trial.TrialReporter`) and asks a predictor for P(high); the trial
    is pruned when P(high) < ``bound``. A trial whose weights or losses became non-finite is pruned at
    once, whatever the epoch.

    The predictor is either a registered MLflow model (``model_uri``, from ``epochgraph-compare
    register=true``; checked at the epoch it was fitted for), or fitted *online* on the study's
    completed trials, labelled by ``label_quantile`` (or ``label_threshold``) of their final value:
    nothing is pruned before ``n_startup_trials`` trials completed and each class holds at least
    ``min_per_class`` of them; the fit is redone whenever more trials completed.

    Example::

        study = optuna.create_study(direction="maximize", pruner=SignaturePruner(n_startup_trials=8))

    Args:
        bound: prune when P(high) is below this (0 < bound < 1).
        check_epochs: epochs (1-based steps) at which to forecast.
        n_startup_trials: completed trials needed before the online predictor prunes.
        min_per_class: completed trials needed in each class (high and low).
        classifier: ``svm``, ``mlp`` or ``xgboost``; ``classifier_params`` passed to it.
        source, centralities, variant, alpha: the `FeatureSpec` (signature, curve or hybrid).
        label_quantile, label_threshold: the label rule (exactly one).
        model_uri: a registered predictor instead of the online one.
        seed: classifier seed.
        refit_every: refit the online predictor once this many more trials completed (1: at each).
    """

    def __init__(self, bound: float = 0.3, check_epochs: Sequence[int] = (2, 3), n_startup_trials: int = 8,
                 min_per_class: int = 3, classifier: str = "svm", classifier_params: Mapping[str, Any] | None = None,
                 source: str = "signature", centralities: Sequence[str] = CENTRALITIES, variant: str = "plain",
                 alpha: float = 0.5, label_quantile: float | None = 0.5, label_threshold: float | None = None,
                 model_uri: str | None = None, seed: int = 0, refit_every: int = 1) -> None:
        if not 0 < bound < 1:
            raise ValueError(f"bound={bound} must be in (0, 1), e.g. 0.3")
        if n_startup_trials < 2:
            raise ValueError(f"n_startup_trials={n_startup_trials} must be >= 2")
        if min_per_class < 1:
            raise ValueError(f"min_per_class={min_per_class} must be >= 1")
        if not check_epochs or min(check_epochs) < 1:
            raise ValueError(f"check_epochs={list(check_epochs)} must list epochs >= 1, e.g. [2, 3]")
        self.bound = float(bound)
        self.check_epochs = sorted({int(e) for e in check_epochs})
        self.n_startup_trials = int(n_startup_trials)
        self.min_per_class = int(min_per_class)
        self.classifier = classifier
        self.classifier_params = dict(classifier_params or {})
        self.spec_kwargs = {"source": source, "centralities": tuple(centralities), "variant": variant,
                            "alpha": float(alpha)}
        FeatureSpec(t=1, **self.spec_kwargs)  # validate now, not at the first prune
        self.rule = LabelRule(label_threshold, None if label_threshold is not None else label_quantile)
        self.seed = seed
        self.model_uri = model_uri
        self._registered: SignaturePredictor | None = load_predictor(model_uri) if model_uri else None
        if self._registered is not None:
            self.check_epochs = [self._registered.spec.t]
        if refit_every < 1:
            raise ValueError(f"refit_every={refit_every} must be >= 1")
        self.refit_every = int(refit_every)
        self._cache: dict[tuple[int, frozenset[int]], SignaturePredictor | None] = {}
        self._last_fit: dict[int, tuple[int, SignaturePredictor | None]] = {}  # t -> (n completed, predictor)
        self.last_forecast: dict[int, float] = {}  # trial number -> the last call's P(high) (the trial has it too)

    def _online(self, study: optuna.Study, t: int) -> SignaturePredictor | None:
        done = [tr for tr in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if tr.value is not None and math.isfinite(tr.value)]
        if len(done) < self.n_startup_trials:
            return None
        last = self._last_fit.get(t)
        if last is not None and last[1] is not None and len(done) - last[0] < self.refit_every:
            return last[1]
        key = (t, frozenset(tr.number for tr in done))
        if key not in self._cache:
            values = [tr.value for tr in done]
            cut = self.rule.cut(values)
            y = (np.asarray(values) >= cut).astype(int)
            if min(int(y.sum()), int(len(y) - y.sum())) < self.min_per_class:
                self._cache[key] = None
            else:
                histories = [trial_history(tr) for tr in done]
                self._cache[key] = SignaturePredictor(
                    FeatureSpec(t=t, **self.spec_kwargs), self.rule, self.classifier, self.classifier_params,
                    self.seed).fit(histories, values)
            self._last_fit[t] = (len(done), self._cache[key])
        return self._cache[key]

    def forecast(self, study: optuna.Study, trial: FrozenTrial) -> float | None:
        """P(high) for ``trial`` at its last reported epoch, or None when no forecast is due or possible."""
        step = trial.last_step
        if step is None or step not in self.check_epochs:
            return None
        history = trial_history(trial)
        if len(history.get("val_acc", [])) < step:
            return None
        predictor = self._registered or self._online(study, step)
        if predictor is None:
            return None
        return float(predictor.predict_proba_high([history])[0])

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        self.last_forecast.pop(trial.number, None)
        decision = self._decide(study, trial)
        p = self.last_forecast.get(trial.number)
        if p is not None and trial.last_step is not None:  # into the trial, where the job reads it
            write_forecast(study, trial, int(trial.last_step), {"probability": p})
        return decision

    def _decide(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        history = trial_history(trial)
        if history and diverged(history):
            self.last_forecast[trial.number] = 0.0
            return True
        try:
            p = self.forecast(study, trial)
        except Exception as err:  # a model that cannot be fitted or asked never stops the user's training
            undecided(self, study, trial, err)
            return False
        if p is None:
            return False
        self.last_forecast[trial.number] = p
        return p < self.bound
