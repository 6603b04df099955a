"""`epochgraph.report_epoch` in one process and across worker processes, and what the forecast pruner makes of
objectives that report through it or through ``trial.report`` alone."""

import logging
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest

from epochgraph import ForecastPruner, graph_signature, report_epoch
from epochgraph.models import build_model
from epochgraph.search.trial_attrs import EPOCH_ATTR, diverged, trial_history
from epochgraph.store.storage import make_storage

SRC = str(Path(__file__).resolve().parents[1] / "src")
EPOCHS = 10


def test_the_public_api_has_the_one_call_of_a_training_loop():
    import epochgraph
    import epochgraph.search

    assert {"report_epoch", "ForecastPruner", "graph_signature"} <= set(epochgraph.__all__)
    assert "report_epoch" in epochgraph.search.__all__ and epochgraph.search.report_epoch is report_epoch


def test_one_process_records_the_curve_and_signature_reports_and_logs_to_the_active_run(tmp_path, tracking_uri):
    import mlflow

    storage = make_storage({"url": f"sqlite:///{tmp_path / 'optuna.db'}"})
    study = optuna.create_study(direction="maximize", storage=storage)
    trial = study.ask()
    model = build_model("lenet", in_channels=1, image_size=28, width=0.5)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run() as run:
        record = report_epoch(trial, 1, val_acc=0.5, model=model, val_loss=1.4, train_loss=None, lr=0.1,
                              extra_metric=7.0)
        report_epoch(trial, 2, val_acc=np.float32(0.625), val_loss=float("nan"))
    frozen = study.trials[0]
    assert frozen.intermediate_values == {1: 0.5, 2: 0.625}
    # the record: the curve values given, the model's signature, nothing for what was not measured
    assert record == frozen.system_attrs[EPOCH_ATTR.format(1)]
    assert record["val_acc"] == 0.5 and record["val_loss"] == 1.4 and record["lr"] == 0.1
    assert "train_loss" not in record and "extra_metric" not in record
    assert record["sig/degree/mean"] == pytest.approx(graph_signature(model)["sig/degree/mean"])
    assert record["sig/nonfinite"] == 0.0
    history = trial_history(frozen)
    assert history["val_acc"] == [0.5, 0.625]
    assert math.isnan(history["val_loss"][1]) and diverged(history)  # a reported NaN loss is a divergence
    # the same values in MLflow, at step = epoch
    client = mlflow.MlflowClient(tracking_uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_acc")] == [(1, 0.5), (2, 0.625)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "sig/eigenvector/std")] == [1]
    assert client.get_metric_history(run.info.run_id, "extra_metric")[0].value == 7.0


def test_no_active_run_no_mlflow_and_bad_values_name_the_fix():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    report_epoch(trial, 3, val_acc=0.4)  # no run is active: only the trial hears of it
    assert study.trials[0].intermediate_values == {3: 0.4}
    with pytest.raises(ValueError, match=r"epoch=0 must be an integer >= 1 .*epoch \+ 1"):
        report_epoch(trial, 0, val_acc=0.4)
    with pytest.raises(TypeError, match="val_loss='low' must be a number"):
        report_epoch(trial, 1, val_acc=0.4, val_loss="low")
    with pytest.raises(TypeError, match="val_acc=None"):
        report_epoch(trial, 1, val_acc=None)


WORKER = textwrap.dedent("""
    import math, sys
    import optuna
    from epochgraph import report_epoch
    from epochgraph.store.storage import make_storage

    url, worker = sys.argv[1], sys.argv[2]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="shared", storage=make_storage({"url": url}))

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("worker", worker)
        for epoch in range(1, 5):
            acc = x * (1 - math.exp(-epoch))
            loss = float("nan") if x > 0.85 and epoch == 2 else 2 * (1 - acc)
            report_epoch(trial, epoch, val_acc=acc, val_loss=loss, train_loss=None)
            if math.isnan(loss):
                return acc
        return acc

    study.optimize(objective, n_trials=3)
""")


@pytest.mark.slow  # a real process (the command, workers or a server): make test runs it
def test_two_worker_processes_share_the_records_through_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="shared", direction="maximize", storage=make_storage({"url": url}))
    xs = [0.2, 0.3, 0.5, 0.6, 0.7, 0.9]
    for x in xs:
        study.enqueue_trial({"x": x})
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    workers = [subprocess.Popen([sys.executable, str(script), url, name], env=env, stderr=subprocess.PIPE, text=True)
               for name in ("a", "b")]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err[-2000:]
    trials = optuna.load_study(study_name="shared", storage=make_storage({"url": url})).trials
    assert sorted(t.params["x"] for t in trials) == xs
    assert sorted(t.user_attrs["worker"] for t in trials) == ["a", "a", "a", "b", "b", "b"]
    for t in trials:
        x = t.params["x"]
        stop = 2 if x > 0.85 else 4
        want = [x * (1 - math.exp(-e)) for e in range(1, stop + 1)]
        history = trial_history(t)  # what a pruner in any process reads
        assert history["val_acc"] == pytest.approx(want)
        assert [t.intermediate_values[e] for e in range(1, stop + 1)] == pytest.approx(want)
        assert "train_loss" not in history  # missing, not a divergence
        assert diverged(history) is (x > 0.85)


# --- the forecast pruner on objectives written without epochgraph ---------------------------------------------

def _curve(final: float, start: float, tau: float = 2.0) -> list[float]:
    e = np.arange(1, EPOCHS + 1)
    return (final - (final - start) * np.exp(-(e - 1) / tau)).tolist()


# six completed trials (the pruner's min_complete) whose early epochs keep their final order
GOOD = [_curve(f, f * s, tau) for f, s, tau in [(0.80, 0.6, 2.0), (0.86, 0.7, 1.5), (0.83, 0.62, 2.5),
                                                (0.88, 0.72, 2.0), (0.78, 0.55, 2.0), (0.84, 0.65, 2.0)]]
BEST = GOOD[3]
FLAT = [0.1 + 0.002 * math.sin(e) for e in range(EPOCHS)]  # chance level on 10 classes


def _run(pruner, plan, report):
    reached = {}

    def objective(trial):
        curve = plan[trial.number]
        for epoch, acc in enumerate(curve, 1):
            report(trial, epoch, acc)
            reached[trial.number] = epoch
            if trial.should_prune():
                raise optuna.TrialPruned()
        return curve[-1]

    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.optimize(objective, n_trials=len(plan))
    return study, reached


@pytest.mark.parametrize("warm_start", [None, "bench/results/populations"])
def test_an_objective_that_only_calls_trial_report_gets_sane_pruning(warm_start, caplog):
    plan = [*GOOD, FLAT, BEST, FLAT, BEST]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        study, reached = _run(ForecastPruner(max_epoch=EPOCHS, warm_start=warm_start), plan,
                              lambda trial, epoch, acc: trial.report(acc, epoch))
    states = [t.state for t in study.trials]
    for number in (6, 8):  # the flat chance-level trials: pruned within a few epochs
        assert states[number] == optuna.trial.TrialState.PRUNED and reached[number] <= 3
    for number in (7, 9):  # the best trial's curve again: never pruned
        assert states[number] == optuna.trial.TrialState.COMPLETE and reached[number] == EPOCHS
    # no warning wall: no warning at all, and one line saying what the forecast reads
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    says = [r.getMessage() for r in caplog.records if "forecasting from" in r.getMessage()]
    assert len(says) == 1 and "forecasting from val_acc (the study reports no val_loss" in says[0]


def test_a_missing_loss_does_not_prune_a_reported_nan_loss_does():
    plan = [*GOOD[:4], BEST]

    def report(trial, epoch, acc):
        report_epoch(trial, epoch, val_acc=acc, val_loss=None, train_loss=None)

    study, reached = _run(ForecastPruner(max_epoch=EPOCHS), plan, report)
    assert reached == {n: EPOCHS for n in range(len(plan))}  # first trials: no incumbent; the last: as good
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == len(plan)
    trial = study.ask()
    report_epoch(trial, 1, val_acc=BEST[0], val_loss=None)
    assert trial.should_prune() is False
    report_epoch(trial, 2, val_acc=BEST[1], val_loss=float("inf"))  # a reported non-finite loss: diverged
    assert trial.should_prune() is True


def test_intermediate_values_fill_only_the_epochs_without_a_record():
    from optuna.trial import TrialState, create_trial

    from epochgraph.search.trial_attrs import with_reported_values

    trial = create_trial(state=TrialState.RUNNING, intermediate_values={1: 0.3, 2: 0.0, 3: 0.5},
                         user_attrs={EPOCH_ATTR.format(1): {"val_acc": 0.3, "val_loss": 1.9},
                                     EPOCH_ATTR.format(2): {"val_acc": None, "val_loss": 1.7}})
    history = with_reported_values(trial_history(trial), trial)
    # epoch 2 was recorded without val_acc: it stays missing (its reported 0.0 is no accuracy); epoch 3 has none
    assert history == {"val_acc": [0.3, None, 0.5], "val_loss": [1.9, 1.7]}


def test_a_trial_declares_its_own_length_once_and_a_bad_one_is_one_line():
    from epochgraph.search.trial_attrs import PLANNED_EPOCHS_ATTR, planned_epochs

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    report_epoch(trial, 1, val_acc=0.3, planned_epochs=40)
    report_epoch(trial, 2, val_acc=0.4, planned_epochs=40)
    assert planned_epochs(study.trials[0]) == 40
    assert study.trials[0].system_attrs[PLANNED_EPOCHS_ATTR] == 40
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=rf"^planned_epochs={bad!r} must be a positive integer"):
            report_epoch(trial, 3, val_acc=0.4, planned_epochs=bad)


def test_forecasts_of_an_accuracy_are_shown_within_0_and_1_and_summaries_to_4_significant_digits():
    import optuna

    from epochgraph.search.sweep_report import shown
    from epochgraph.search.trial_attrs import FORECAST_EPOCH_ATTR, UPPER_ATTR, write_forecast

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)
    assert write_forecast(study, frozen, 1, {"probability": 0.2, "final": 1.07, "upper": 1.05}, upper=1.02,
                          accuracy=True)
    attrs = study._storage.get_trial(trial._trial_id).system_attrs
    assert attrs[FORECAST_EPOCH_ATTR.format(1)] == {"probability": 0.2, "final": 1.0, "upper": 1.0}
    assert attrs[UPPER_ATTR.format(1)] == 1.02  # what the calibration reads back stays as forecast
    assert write_forecast(study, frozen, 2, {"final": -0.1}, accuracy=True)
    assert study._storage.get_trial(trial._trial_id).system_attrs[FORECAST_EPOCH_ATTR.format(2)] == {"final": 0.0}
    assert shown(0.45999999999999996) == 0.46 and shown(2.309716819160651e-05) == 2.31e-05 and shown(7) == 7
    assert shown("sgd") == "sgd" and shown(float("nan")) != shown(float("nan"))  # NaN passes through
