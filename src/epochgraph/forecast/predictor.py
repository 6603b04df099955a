"""The forecaster (paper S4): features of a training run up to epoch t -> P(final accuracy is high).

A run's *history* is a mapping ``metric name -> values for epochs 1..T`` (index 0 = epoch 1), read
back from MLflow metric histories or from an Optuna trial's user attrs alike. `FeatureSpec` turns a
history into a feature vector; `make_classifier` builds a scikit-learn `Pipeline` whose imputation and
scaling are fitted inside it (so cross-validation never leaks); `LabelRule` maps final accuracies to
high (1) / low (0); `SignaturePredictor` ties the three together and round-trips through the MLflow
Model Registry.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from epochgraph.errors import EpochgraphError, choice_error
from epochgraph.graph.centrality import CENTRALITIES
from epochgraph.graph.signature import NONFINITE, VARIANTS, TemporalSignature

CURVE_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
SOURCES = ("signature", "curve", "hybrid", "b_wl", "b_what", "b_wprime", "unrolled")
WEIGHT_SOURCES = ("b_wl", "b_what", "b_wprime", "unrolled")  # need the weights artifacts
CLASSIFIERS = ("svm", "mlp", "xgboost")
VALUE_CLIP = 1e6  # diverging losses are huge: clip so that one run does not dominate the scaling

History = Mapping[str, Sequence[Any]]

# SVC(probability=True) (Platt scaling) is deprecated in favour of CalibratedClassifierCV, whose inner
# cross-validation needs more runs per class than small populations have; scikit-learn is pinned <1.11.
warnings.filterwarnings("ignore", message="The `probability` parameter was deprecated", category=FutureWarning)


@dataclass(frozen=True)
class FeatureSpec:
    """Which features of a run's first ``t`` epochs the classifier sees.

    * ``signature``: the temporal signature s^t of ``centralities`` (``variant``: plain / wavg / expavg,
      ``alpha`` for expavg), plus a flag that is 1 when any snapshot had non-finite weights;
    * ``curve``: val_acc, val_loss, train_acc, train_loss for epochs 1..t (the learning curve, the signal
      Optuna's own pruners use), plus the same non-finite flag;
    * ``hybrid``: signature (+) curve;
    * ``b_wl`` / ``b_what`` / ``b_wprime``: the paper's last-layer weight baselines at epoch t, and
      ``unrolled``: the degree signature of the unrolled graph, epochs 1..t; these read precomputed
      per-epoch vectors stored in the history under their own name.
    """

    source: str = "signature"
    centralities: tuple[str, ...] = CENTRALITIES
    t: int = 3
    variant: str = "plain"
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise choice_error("feature source", self.source, SOURCES, key="features")
        if self.variant not in VARIANTS:
            raise choice_error("signature variant", self.variant, VARIANTS, key="variant")
        if int(self.t) < 1:
            raise EpochgraphError(f"t={self.t} must be >= 1 (the epochs the forecast may use)")
        object.__setattr__(self, "centralities", tuple(self.centralities))

    @property
    def label(self) -> str:
        """Short name used in tables, e.g. ``signature-both-wavg``, ``curve``, ``b_wl``."""
        if self.source in ("signature", "hybrid"):
            cent = "both" if len(self.centralities) > 1 else self.centralities[0]
            return f"{self.source}-{cent}-{self.variant}"
        return self.source

    def _signature(self, history: History) -> np.ndarray:
        ts = TemporalSignature.from_metric_history(history, self.centralities)
        rows = ts.matrix(min(len(ts), self.t), self.variant, self.alpha) if len(ts) else np.empty((0, 0))
        width = 5 * len(self.centralities)
        out = np.full((self.t, width), np.nan)
        if rows.size:
            out[: rows.shape[0]] = rows
        flags = [float(v) for v in list(history.get(NONFINITE, []))[: self.t]]
        diverged = float(any(f > 0 for f in flags) or len(ts) < self.t)
        return np.append(out.reshape(-1), diverged)

    def _curve(self, history: History) -> np.ndarray:
        out = np.full((self.t, len(CURVE_METRICS)), np.nan)
        for j, name in enumerate(CURVE_METRICS):
            values = np.asarray(list(history.get(name, []))[: self.t], dtype=float)
            out[: len(values), j] = values
        # the same divergence flag the signature carries: missing or non-finite epochs
        return np.append(out.reshape(-1), float(not np.all(np.isfinite(out))))

    def vector(self, history: History) -> np.ndarray:
        """The feature vector of one run (NaN where an epoch is missing, e.g. after divergence)."""
        if self.source == "signature":
            return self._signature(history)
        if self.source == "curve":
            return self._curve(history)
        if self.source == "hybrid":
            return np.concatenate([self._signature(history), self._curve(history)])
        per_epoch = list(history.get(self.source, []))
        if self.source == "unrolled":
            rows = [np.asarray(v, dtype=float) for v in per_epoch[: self.t]]
            width = 5
            out = np.full((self.t, width), np.nan)
            for i, r in enumerate(rows):
                if r.size == width:
                    out[i] = r
            return out.reshape(-1)
        if len(per_epoch) < self.t or per_epoch[self.t - 1] is None:
            raise EpochgraphError(f"no {self.source} features for epoch {self.t}")
        return np.asarray(per_epoch[self.t - 1], dtype=float)

    def matrix(self, histories: Sequence[History]) -> np.ndarray:
        """``[len(histories), n_features]``: one `vector` per run."""
        return np.vstack([self.vector(h) for h in histories])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored with a registered model."""
        d = asdict(self)
        d["centralities"] = list(self.centralities)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of `to_dict`."""
        return cls(source=d["source"], centralities=tuple(d["centralities"]), t=int(d["t"]),
                   variant=d["variant"], alpha=float(d["alpha"]))


def _finite(x: np.ndarray) -> np.ndarray:
    """inf -> NaN (imputed next), and huge finite values clipped to +-`VALUE_CLIP`."""
    x = np.array(x, dtype=float)
    x[~np.isfinite(x)] = np.nan
    return np.clip(x, -VALUE_CLIP, VALUE_CLIP)


def make_classifier(kind: str, seed: int = 0, **params: Any) -> Pipeline:
    """non-finite -> NaN, median imputation, standard scaling and the classifier, as one `Pipeline`.

    ``kind`` is ``svm`` (``SVC(probability=True)``), ``mlp`` (``MLPClassifier``) or ``xgboost``
    (``XGBClassifier``); ``params`` override the defaults (``conf/compare/predictor/<kind>.yaml``).
    Imputation and scaling are fitted with the classifier, so cross-validation never leaks.
    """
    if kind == "svm":
        from sklearn.svm import SVC

        clf = SVC(probability=True, random_state=seed, **{"C": 1.0, "kernel": "rbf", **params})
    elif kind == "mlp":
        from sklearn.neural_network import MLPClassifier

        defaults = {"hidden_layer_sizes": (64, 32), "max_iter": 2000, "alpha": 1e-3}
        merged = {**defaults, **params}
        merged["hidden_layer_sizes"] = tuple(merged["hidden_layer_sizes"])
        clf = MLPClassifier(random_state=seed, **merged)
    elif kind == "xgboost":
        from xgboost import XGBClassifier

        clf = XGBClassifier(random_state=seed, n_jobs=1, verbosity=0,
                            **{"n_estimators": 200, "max_depth": 3, "learning_rate": 0.1, **params})
    else:
        raise choice_error("classifier", kind, CLASSIFIERS, key="predictor")
    return Pipeline([
        ("finite", FunctionTransformer(_finite)),
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("clf", clf),
    ])


@dataclass(frozen=True)
class LabelRule:
    """High (1) when the final accuracy is >= ``threshold``, or >= the ``quantile`` of the population.

    A run without a final accuracy (NaN, e.g. diverged) is low.

    >>> LabelRule(quantile=0.5).labels([0.1, 0.5, 0.7, 0.9]).tolist()
    [0, 0, 1, 1]

    Args:
        threshold: an absolute cut on the final accuracy (e.g. 0.85).
        quantile: a cut at this quantile of the population's final accuracies (e.g. 0.5); set exactly
            one of the two.
    """

    threshold: float | None = None
    quantile: float | None = None

    def __post_init__(self) -> None:
        if (self.threshold is None) == (self.quantile is None):
            raise EpochgraphError("set exactly one of label.threshold (e.g. 0.85) or label.quantile (e.g. 0.5)")
        if self.quantile is not None and not 0 < self.quantile < 1:
            raise EpochgraphError(f"label.quantile={self.quantile} must be in (0, 1), e.g. label.quantile=0.5")

    @classmethod
    def from_config(cls, threshold: float | None, quantile: float | None) -> LabelRule:
        """The rule of a ``label`` config group: ``threshold``, when set, takes precedence over ``quantile``."""
        return cls(threshold, None) if threshold is not None else cls(None, quantile)

    def cut(self, final_accs: Sequence[float]) -> float:
        """The accuracy at or above which a run is high (the quantile ignores NaN accuracies)."""
        accs = np.asarray(final_accs, dtype=float)
        if self.threshold is not None:
            return float(self.threshold)
        return float(np.quantile(accs[np.isfinite(accs)], self.quantile))

    def labels(self, final_accs: Sequence[float], cut: float | None = None) -> np.ndarray:
        """0/1 labels; raises a one-line error when a class would be empty."""
        raw = np.asarray(final_accs, dtype=float)
        if np.isfinite(raw).sum() < 2:
            raise EpochgraphError(f"{np.isfinite(raw).sum()} run(s) with a final accuracy; labelling high / low "
                                  f"needs at least 2 (one of each)")
        accs = np.nan_to_num(raw, nan=0.0)
        cut = self.cut(final_accs) if cut is None else cut
        y = (accs >= cut).astype(int)
        if y.min() == y.max():
            side = "high" if y.max() == 0 else "low"
            if self.threshold is not None:
                raise EpochgraphError(f"label.threshold={self.threshold} leaves no run labelled {side} among "
                                      f"{len(y)} runs; {'lower' if side == 'high' else 'raise'} it "
                                      f"or use label.threshold=null label.quantile=0.5")
            lo, hi = float(accs.min()), float(accs.max())
            fix = (f"set label.threshold between {lo:.4f} and {hi:.4f}" if hi > lo else
                   f"all runs end at {lo:.4f}; the population needs runs of different accuracy")
            raise EpochgraphError(f"label.quantile={self.quantile} (cut {cut:.4f}) leaves no run labelled {side} "
                                  f"among {len(y)} runs (ties at the cut); {fix}")
        return y

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored with a registered model."""
        return {"threshold": self.threshold, "quantile": self.quantile}


@dataclass
class SignaturePredictor:
    """A forecaster: P(high final accuracy) from a run's first ``spec.t`` epochs.

    >>> pred = SignaturePredictor(FeatureSpec("signature", t=3), LabelRule(quantile=0.5), "svm")
    >>> pred.fit(histories, final_accs).predict_proba_high(new_histories)  # doctest: +SKIP

    Args:
        spec: which features of a run it reads.
        rule: how final accuracies become labels (the cut is fixed at `fit` time, ``cut``).
        classifier: ``svm``, ``mlp`` or ``xgboost`` (see `make_classifier`).
        params: the classifier's hyperparameters (``conf/compare/predictor/<kind>.yaml``).
        seed: the classifier's random state.
        pipeline: the fitted pipeline (set by `fit` or `load_predictor`).
        cut: the accuracy cut learned by `fit`.
    """

    spec: FeatureSpec
    rule: LabelRule
    classifier: str = "svm"
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    pipeline: Pipeline | None = None
    cut: float | None = None

    def fit(self, histories: Sequence[History], final_accs: Sequence[float]) -> SignaturePredictor:
        """Label ``final_accs`` with ``rule`` and fit a fresh pipeline on ``histories``; returns self."""
        self.cut = self.rule.cut(final_accs)
        y = self.rule.labels(final_accs, self.cut)
        self.pipeline = make_classifier(self.classifier, self.seed, **self.params)
        self.pipeline.fit(self.spec.matrix(histories), y)
        return self

    def predict_proba_high(self, histories: Sequence[History]) -> np.ndarray:
        """P(high) for each history (``[len(histories)]``)."""
        if self.pipeline is None:
            raise EpochgraphError("the predictor is not fitted yet")
        return self.pipeline.predict_proba(self.spec.matrix(histories))[:, 1]

    def metadata(self) -> dict[str, Any]:
        """Everything but the pipeline, JSON-ready: what `load_predictor` rebuilds the predictor from."""
        return {"spec": self.spec.to_dict(), "rule": self.rule.to_dict(), "classifier": self.classifier,
                "params": self.params, "seed": self.seed, "cut": self.cut}

    def log_model(self, name: str = "predictor", registered_model_name: str | None = None) -> Any:
        """Log the fitted pipeline to the active MLflow run (and register it); returns the model info."""
        from epochgraph.forecast.registry import log_sklearn_model

        return log_sklearn_model(self.pipeline, name, registered_model_name,
                                 metadata={"epochgraph": json.dumps(self.metadata())})


def load_predictor(model_uri: str) -> SignaturePredictor:
    """Load a predictor logged by `SignaturePredictor.log_model`, e.g. ``models:/signature@champion``."""
    import mlflow
    import mlflow.sklearn

    try:
        info = mlflow.models.get_model_info(model_uri)
        pipeline = mlflow.sklearn.load_model(model_uri)
    except Exception as err:  # MLflow raises several types for a missing model / version / alias
        raise EpochgraphError(f"cannot load the predictor {model_uri!r}: {str(err).splitlines()[0][:160]}; "
                              f"register one with epochgraph-compare ... register=true") from None
    meta = (info.metadata or {}).get("epochgraph")
    if meta is None:
        raise EpochgraphError(f"{model_uri!r} is not an epochgraph predictor (no feature spec in its metadata)")
    meta = json.loads(meta) if isinstance(meta, str) else meta
    return SignaturePredictor(spec=FeatureSpec.from_dict(meta["spec"]), rule=LabelRule(**meta["rule"]),
                              classifier=meta["classifier"], params=meta["params"], seed=meta["seed"],
                              pipeline=pipeline, cut=meta["cut"])
