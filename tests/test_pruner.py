"""SignaturePruner decisions on hand-built trials, and every pruner preset running one real trial."""

from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from epochgraph.graph.signature import AGGREGATORS
from epochgraph.search.pruner import SignaturePruner
from epochgraph.search.trial_attrs import EPOCH_ATTR, trial_history

CONF = Path(__file__).resolve().parents[1] / "conf" / "pruner"


def _epoch_attrs(level: float, epochs: int, nonfinite: bool = False) -> dict:
    """Per-epoch user attrs whose signature sits around ``level`` (high runs: level 1, low runs: 5)."""
    attrs = {}
    for e in range(1, epochs + 1):
        sig = {f"sig/{c}/{a}": level + 0.1 * i + 0.01 * e for c in ("degree", "eigenvector")
               for i, a in enumerate(AGGREGATORS)}
        sig.update({"sig/nonfinite": 1.0 if nonfinite else 0.0, "val_acc": 0.5, "val_loss": 1.0,
                    "train_acc": 0.5, "train_loss": 1.0})
        attrs[EPOCH_ATTR.format(e)] = sig
    return attrs


def _study(n_high: int, n_low: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    rng = np.random.default_rng(0)
    for i in range(n_high + n_low):
        high = i < n_high
        level = (1.0 if high else 5.0) + rng.normal(0, 0.05)
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=0.85 if high else 0.3,
            params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1)},
            intermediate_values={e: 0.5 for e in range(1, 6)}, user_attrs=_epoch_attrs(level, 5)))
    return study


def _running(level: float, epochs: int, nonfinite: bool = False):
    return create_trial(state=TrialState.RUNNING, params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1)},
                        intermediate_values={e: 0.5 for e in range(1, epochs + 1)},
                        user_attrs=_epoch_attrs(level, epochs, nonfinite))


def test_prunes_low_forecast_and_keeps_high_at_check_epochs():
    pruner = SignaturePruner(bound=0.5, check_epochs=[2], n_startup_trials=6, min_per_class=2)
    study = _study(4, 4)
    assert pruner.prune(study, _running(5.0, 2)) is True
    assert list(pruner.last_forecast.values())[-1] < 0.5
    assert pruner.prune(study, _running(1.0, 2)) is False
    # epoch 1 is not a check epoch, epoch 3 neither
    assert pruner.prune(study, _running(5.0, 1)) is False
    assert pruner.prune(study, _running(5.0, 3)) is False


def test_never_prunes_before_enough_trials_of_both_classes():
    low_trial = _running(5.0, 2)
    assert SignaturePruner(check_epochs=[2], n_startup_trials=9).prune(_study(4, 4), low_trial) is False
    # 8 complete trials but all labelled high under a fixed threshold: no predictor yet
    only_high = SignaturePruner(check_epochs=[2], n_startup_trials=6, min_per_class=2, label_threshold=0.2)
    assert only_high.prune(_study(4, 4), low_trial) is False


def test_nonfinite_weights_are_pruned_at_once():
    pruner = SignaturePruner(check_epochs=[3], n_startup_trials=100)
    assert pruner.prune(_study(1, 1), _running(1.0, 1, nonfinite=True)) is True


def test_history_is_rebuilt_from_user_attrs():
    h = trial_history(_running(1.0, 3))
    assert len(h["sig/degree/mean"]) == 3 and h["sig/degree/mean"][2] == pytest.approx(1.13)


@pytest.mark.parametrize("kwargs, match", [
    ({"bound": 1.5}, "bound=1.5"), ({"check_epochs": []}, "check_epochs"), ({"n_startup_trials": 1}, "n_startup"),
])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SignaturePruner(**kwargs)


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_every_pruner_preset_composes_and_runs_one_trial(name, tmp_path, tracking_uri):
    from epochgraph.search.trial import build_pruner, run_trial
    from epochgraph.store.storage import make_storage
    from tests.conftest import TINY, compose_train

    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = compose_train([*TINY, f"pruner={name}", f"storage.url={storage_url}", "optuna.study_name=s",
                         "optuna.trial_number=0", "mlflow.keep_weights=[]"], tracking_uri)
    study = optuna.create_study(study_name="s", storage=make_storage(cfg.storage), pruner=build_pruner(cfg),
                                direction="maximize")
    study.ask()
    out = run_trial(cfg)
    assert out["state"] in ("COMPLETE", "PRUNED")
    assert 1 <= out["epochs"] <= 2
    frozen = study.get_trials()[0]
    assert frozen.user_attrs["mlflow_run_id"] == out["run_id"]
    assert sorted(frozen.intermediate_values) == list(range(1, out["epochs"] + 1))
    assert "sig/eigenvector/kurtosis" in frozen.system_attrs["epoch_001"]
    # what optuna-dashboard lists stays short: no per-epoch records among the user attrs, the run linked
    assert not [k for k in frozen.user_attrs if k.startswith(("epoch_", "forecast_upper_", "lr_schedule"))]
    assert all(isinstance(v, (str, int, float)) for v in frozen.user_attrs.values()), frozen.user_attrs
    assert frozen.user_attrs["mlflow_run"].endswith(f"/runs/{out['run_id']}?workflowType=machine_learning")
    # and in the trial's optuna-dashboard note (kept in the study's system attrs), as a Markdown link
    link = f"[{out['run_id']}]({frozen.user_attrs['mlflow_run']})"
    storage = make_storage(cfg.storage)
    notes = storage.get_study_system_attrs(storage.get_study_id_from_name("s")).values()
    assert any(isinstance(v, str) and link in v for v in notes)
    # first a link through the dashboard itself, which forwards it to wherever the MLflow UI runs
    page = frozen.user_attrs["mlflow_run"].split("#/")[1].split("?")[0]
    assert page.startswith("experiments/") and page.endswith(f"/runs/{out['run_id']}")
    assert any(isinstance(v, str) and f"[open it in the MLflow UI](/mlflow/{page})" in v for v in notes)


def test_the_pruner_writes_its_forecast_into_the_trial_where_another_process_reads_it(tmp_path):
    from epochgraph.search.epoch_report import record_forecast
    from epochgraph.search.trial_attrs import FORECAST_ATTR, FORECAST_EPOCH_ATTR

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    pruner = SignaturePruner(bound=0.5, check_epochs=[2], n_startup_trials=6, min_per_class=2)
    study = optuna.create_study(direction="maximize", pruner=pruner, storage=storage, study_name="s")
    for tr in _study(4, 4).trials:
        study.add_trial(tr)
    trial = study.ask()
    for key, value in _epoch_attrs(5.0, 2).items():
        trial.set_user_attr(key, value)
    trial.report(0.5, 1)
    assert trial.should_prune() is False and record_forecast(trial, 1) == {}  # epoch 1: no forecast
    trial.report(0.5, 2)
    assert trial.should_prune() is True
    # another process: a study loaded without the pruner that forecast, the trial rebuilt from the storage
    other = optuna.trial.Trial(optuna.load_study(study_name="s", storage=storage), trial._trial_id)
    shown = record_forecast(other, 2)
    assert shown == {"forecast/probability": pytest.approx(pruner.last_forecast[trial.number])}
    assert shown["forecast/probability"] < 0.5
    frozen = study.trials[-1]
    assert frozen.user_attrs[FORECAST_ATTR] == shown["forecast/probability"]
    assert frozen.system_attrs[FORECAST_EPOCH_ATTR.format(2)] == {"probability": shown["forecast/probability"]}
