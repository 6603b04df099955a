"""Forecasters in the MLflow model registry: fit one on recorded trainings, log and register it, load it back
(a `ForecastPruner` warm-starts from ``models:/...``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from epochgraph.errors import EpochgraphError
from epochgraph.forecast.forecaster import FinalAccuracyForecaster, History, training_pairs

__all__ = ["fit_forecaster", "load_forecaster", "log_forecaster", "log_sklearn_model", "model_requirements"]

_BASE_REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "scipy", "skops", "epochgraph")

def fit_forecaster(histories: Sequence[History], source: str = "curve", method: str = "quantile_gbm",
                   max_epoch: int | None = None, **params: Any) -> FinalAccuracyForecaster:
    """A forecaster fitted on every pair of epochs of ``histories``, keeping its rows (``train_X_``,
    ``train_y_``) so that a pruner can refit it with a study's own trials."""
    from threadpoolctl import threadpool_limits

    X, y, g = training_pairs(histories, source, max_epoch)
    with threadpool_limits(1):
        model = FinalAccuracyForecaster(source=source, method=method, **params).fit(X, y, groups=g)
    model.train_X_, model.train_y_ = X, y
    return model


def model_requirements(types: Sequence[str]) -> list[str]:
    """The pip requirements of a logged model whose pickle holds ``types`` (``xgboost.sklearn.XGBClassifier``, ...):
    scikit-learn, skops, MLflow, epochgraph and the packages those types come from, at the versions installed.
    Given to MLflow explicitly: inferring them loads the model in a new process (seconds per model), and lists
    whatever the logging process had imported."""
    from importlib import metadata

    by_module = metadata.packages_distributions()
    names = list(_BASE_REQUIREMENTS)
    for t in types:
        for dist in by_module.get(t.split(".", 1)[0], []):
            if dist not in names:
                names.append(dist)
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def log_sklearn_model(model: Any, name: str, registered_model_name: str | None = None,
                      metadata: dict[str, str] | None = None) -> Any:
    """Log a scikit-learn estimator of ours to the active MLflow run (and register it); returns the model info.
    MLflow stores it with skops, which loads only the types listed as trusted: ours are the model's own classes
    (the classifier, xgboost's booster, our finite-values transform)."""
    import mlflow.sklearn
    import skops.io

    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    return mlflow.sklearn.log_model(model, name=name, registered_model_name=registered_model_name, metadata=metadata,
                                    skops_trusted_types=trusted, pip_requirements=model_requirements(trusted))


def log_forecaster(model: FinalAccuracyForecaster, name: str = "forecaster",
                   registered_model_name: str | None = None) -> Any:
    """Log a fitted forecaster to the active MLflow run (and register it); returns the model info."""
    return log_sklearn_model(model, name, registered_model_name, metadata={"epochgraph_forecaster": model.source})


def load_forecaster(model_uri: str) -> FinalAccuracyForecaster:
    """A forecaster logged by `log_forecaster`, e.g. ``models:/epochgraph-forecaster@champion``."""
    import mlflow.sklearn

    try:
        model = mlflow.sklearn.load_model(model_uri)
    except Exception as err:  # MLflow raises several types for a missing model / version / alias
        raise EpochgraphError(f"cannot load the forecaster {model_uri!r}: {str(err).splitlines()[0][:160]}; "
                              f"register one with epochgraph-compare ... register_forecaster=true") from None
    if not isinstance(model, FinalAccuracyForecaster) or not hasattr(model, "train_X_"):
        raise EpochgraphError(f"{model_uri!r} is not an epochgraph forecaster (register one with "
                              f"epochgraph-compare ... register_forecaster=true)")
    return model
