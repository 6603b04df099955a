from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.model_selection import StratifiedKFold, cross_validate

from epochgraph.errors import EpochgraphError
from epochgraph.forecast.predictor import FeatureSpec, LabelRule, SignaturePredictor, load_predictor, make_classifier
from epochgraph.graph.signature import AGGREGATORS
from epochgraph.search.pruner import SignaturePruner


def _history(level: float, epochs: int = 3, rng=None) -> dict:
    rng = rng or np.random.default_rng(0)
    h = {f"sig/{c}/{a}": list(level + i + rng.normal(0, 0.1, epochs)) for c in ("degree", "eigenvector")
         for i, a in enumerate(AGGREGATORS)}
    h["sig/nonfinite"] = [0.0] * epochs
    h.update(val_acc=[0.5] * epochs, val_loss=[1.0] * epochs, train_acc=[0.5] * epochs, train_loss=[1.0] * epochs)
    return h


def _population(n: int = 20):
    rng = np.random.default_rng(1)
    histories = [_history(1.0 if i % 2 else 3.0, rng=rng) for i in range(n)]
    accs = [0.9 if i % 2 else 0.2 for i in range(n)]
    return histories, accs


def test_label_rule_threshold_quantile_and_empty_class():
    accs = [0.1, 0.5, 0.7, 0.9]
    assert list(LabelRule(threshold=0.6).labels(accs)) == [0, 0, 1, 1]
    assert list(LabelRule(quantile=0.5).labels(accs)) == [0, 0, 1, 1]  # cut at the median, 0.6
    assert list(LabelRule(quantile=0.25).labels(accs)) == [0, 1, 1, 1]
    with pytest.raises(EpochgraphError, match="label.threshold=0.99 leaves no run labelled high among 4 runs"):
        LabelRule(threshold=0.99).labels(accs)
    with pytest.raises(EpochgraphError, match="exactly one"):
        LabelRule(threshold=0.5, quantile=0.5)
    assert LabelRule.from_config(0.6, 0.5) == LabelRule(threshold=0.6)  # a set threshold wins
    assert LabelRule.from_config(None, 0.5) == LabelRule(quantile=0.5)
    with pytest.raises(EpochgraphError, match=r"ties at the cut\); set label.threshold between 0.1000 and 0.8000"):
        LabelRule(quantile=0.5).labels([0.1] * 4 + [0.8] * 2)
    with pytest.raises(EpochgraphError, match="needs at least 2"):
        LabelRule(quantile=0.5).labels([0.7, float("nan")])
    # a run without a final accuracy (diverged) is low
    assert list(LabelRule(threshold=0.5).labels([0.7, float("nan"), 0.2])) == [1, 0, 0]


def test_feature_spec_shapes_and_divergence_flag():
    h = _history(1.0)
    assert FeatureSpec("signature", t=2).vector(h).shape == (2 * 10 + 1,)
    assert FeatureSpec("signature", ("degree",), t=3).vector(h).shape == (3 * 5 + 1,)
    assert FeatureSpec("curve", t=2).vector(h).shape == (2 * 4 + 1,)
    assert FeatureSpec("hybrid", t=1).vector(h).shape == (11 + 5,)
    short = {k: v[:1] for k, v in h.items()}  # a run that stopped after epoch 1 (diverged)
    v = FeatureSpec("signature", t=3).vector(short)
    assert v[-1] == 1.0 and np.isnan(v[10:20]).all()
    with pytest.raises(EpochgraphError, match="unknown feature source 'weights'"):
        FeatureSpec("weights")


def test_scaling_is_fitted_inside_each_fold_only():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)) * [1, 10, 100] + [0, 5, -50]
    y = np.array([0, 1] * 20)
    cv = StratifiedKFold(4, shuffle=True, random_state=0)
    res = cross_validate(make_classifier("svm"), X, y, cv=cv, return_estimator=True, return_indices=True)
    for est, train_idx in zip(res["estimator"], res["indices"]["train"]):
        assert np.allclose(est.named_steps["scale"].mean_, X[train_idx].mean(axis=0))
        assert not np.allclose(est.named_steps["scale"].mean_, X.mean(axis=0))


@pytest.mark.parametrize("kind", ["svm", "mlp", "xgboost"])
def test_classifiers_separate_a_clear_population(kind):
    histories, accs = _population()
    pred = SignaturePredictor(FeatureSpec(t=2), LabelRule(quantile=0.5), kind).fit(histories, accs)
    p = pred.predict_proba_high([_history(1.0), _history(3.0)])
    assert p[0] > 0.5 > p[1]


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory):
    """One MLflow store for the registry tests of this module (a fresh SQLite store takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlruns' / 'mlflow.db'}"


def test_registry_round_trip_and_pruner_uses_the_registered_model(registry_uri):
    tracking_uri = registry_uri
    mlflow.set_tracking_uri(tracking_uri)
    histories, accs = _population()
    pred = SignaturePredictor(FeatureSpec(t=2, variant="wavg"), LabelRule(quantile=0.5), "xgboost").fit(histories, accs)
    exp = MlflowClient(tracking_uri).create_experiment("reg")
    with mlflow.start_run(experiment_id=exp):
        info = pred.log_model(registered_model_name="sig-test")
    MlflowClient(tracking_uri).set_registered_model_alias("sig-test", "champion", str(info.registered_model_version))
    loaded = load_predictor("models:/sig-test@champion")
    probe = [_history(1.0, rng=np.random.default_rng(5)), _history(3.0, rng=np.random.default_rng(6))]
    assert np.array_equal(loaded.predict_proba_high(probe), pred.predict_proba_high(probe))
    assert loaded.spec == pred.spec and loaded.cut == pred.cut
    # what installing the model needs, named by us (not inferred from what the logging process imported)
    from importlib.metadata import version

    wanted = Path(mlflow.pyfunc.get_model_dependencies("models:/sig-test@champion")).read_text().split()
    assert {f"xgboost=={version('xgboost')}", f"scikit-learn=={version('scikit-learn')}", "skops==" + version("skops"),
            f"epochgraph=={version('epochgraph')}"} <= set(wanted)
    assert not any(w.startswith(("pytest", "torch")) for w in wanted), wanted

    pruner = SignaturePruner(model_uri="models:/sig-test@champion", bound=0.5)
    assert pruner.check_epochs == [2]
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from epochgraph.search.trial_attrs import EPOCH_ATTR

    def running(h):
        attrs = {EPOCH_ATTR.format(e + 1): {k: v[e] for k, v in h.items()} for e in range(2)}
        return create_trial(state=TrialState.RUNNING, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                            intermediate_values={1: 0.5, 2: 0.5}, user_attrs=attrs)

    study = optuna.create_study(direction="maximize")
    assert pruner.prune(study, running(probe[1])) is True
    assert pruner.prune(study, running(probe[0])) is False


def test_missing_registered_model_is_one_clear_line(registry_uri):
    mlflow.set_tracking_uri(registry_uri)
    with pytest.raises(EpochgraphError, match="cannot load the predictor 'models:/nope@champion'"):
        load_predictor("models:/nope@champion")
