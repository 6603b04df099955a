"""The package's old module paths still work: the same modules under both names, and models registered
in the MLflow Model Registry before the modules moved into folders still load."""

import importlib

import mlflow
import numpy as np
import pytest

from epochgraph._moved import MOVED
from epochgraph.forecast import forecaster, predictor
from epochgraph.search.forecast_pruner import fit_forecaster, load_forecaster, log_forecaster
from tests.test_forecast import EPOCHS, population
from tests.test_predictor import _history
from tests.test_predictor import _population as signature_population


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_is_the_module_at_its_new_path(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__name__ == MOVED[old] and module.__spec__.name == MOVED[old]


def test_from_the_old_paths_import_the_same_objects():
    from epochgraph.forecast_pruner import ForecastPruner
    from epochgraph.graph_stage import GraphStage
    from epochgraph.tracking import weights_artifact

    from epochgraph.forecast import FinalAccuracyForecaster

    assert FinalAccuracyForecaster is forecaster.FinalAccuracyForecaster
    assert ForecastPruner.__module__ == "epochgraph.search.forecast_pruner"
    assert GraphStage.__module__ == "epochgraph.graph.graph_stage"
    assert weights_artifact(3) == "weights/epoch_003.safetensors"


def test_a_forecaster_registered_under_the_old_class_path_loads(tracking_uri, monkeypatch):
    mlflow.set_tracking_uri(tracking_uri)
    model = fit_forecaster(population(20), max_epoch=EPOCHS, levels=(0.5, 0.95))
    with monkeypatch.context() as m:  # serialised as the flat package named it: epochgraph.forecast
        m.setattr(forecaster.FinalAccuracyForecaster, "__module__", "epochgraph.forecast")
        with mlflow.start_run():
            log_forecaster(model, registered_model_name="old-fc")
    loaded = load_forecaster("models:/old-fc/1")
    assert type(loaded) is forecaster.FinalAccuracyForecaster
    X = model.train_X_[:5]
    assert np.array_equal(loaded.predict(X), model.predict(X))


def test_a_predictor_registered_under_the_old_module_path_loads(tracking_uri, monkeypatch):
    mlflow.set_tracking_uri(tracking_uri)
    histories, accs = signature_population()
    pred = predictor.SignaturePredictor(predictor.FeatureSpec(t=2), predictor.LabelRule(quantile=0.5), "svm")
    pred.fit(histories, accs)
    with monkeypatch.context() as m:  # its pipeline's finite-values transform, as epochgraph.predictor._finite
        m.setattr(predictor._finite, "__module__", "epochgraph.predictor")
        with mlflow.start_run():
            info = pred.log_model(registered_model_name="old-sig")
    loaded = predictor.load_predictor(f"models:/old-sig/{info.registered_model_version}")
    probe = [_history(1.0, rng=np.random.default_rng(5)), _history(3.0, rng=np.random.default_rng(6))]
    assert np.array_equal(loaded.predict_proba_high(probe), pred.predict_proba_high(probe))
