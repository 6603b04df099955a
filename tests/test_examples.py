"""The scripts in examples/ run as a user runs them, on tiny data, and leave what they say in Optuna and MLflow."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest

from epochgraph.search.trial_attrs import EPOCH_ATTR

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--trials", "3", "--epochs", "2", "--train-size", "200", "--val-size", "100", "--batch-size", "50"]


def _run(script: str, tmp_path: Path) -> tuple[str, str, str]:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), *TINY, "--storage", storage,
                          "--tracking-uri", tracking, "--study-name", "s"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, storage, tracking


@pytest.mark.slow  # the example scripts run as a user runs them: real processes
@pytest.mark.parametrize("script", ["optuna_forecast_pruner.py", "lightning_forecast_pruner.py"])
def test_the_example_runs_and_records_every_epoch(script, tmp_path):
    stdout, storage, tracking = _run(script, tmp_path)
    study = optuna.load_study(study_name="s", storage=storage)
    trials = study.trials
    assert len(trials) == 3
    states = [t.state for t in trials]
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    complete = states.count(optuna.trial.TrialState.COMPLETE)
    assert f"3 trials: {complete} complete, {3 - complete} pruned" in stdout
    for t in trials:
        steps = sorted(t.intermediate_values)
        assert steps == list(range(1, len(steps) + 1)) and steps
        for e in steps:
            record = t.system_attrs[EPOCH_ATTR.format(e)]
            assert record["val_acc"] == pytest.approx(t.intermediate_values[e])
            assert record["sig/nonfinite"] == 0.0 and "sig/eigenvector/median" in record and "val_loss" in record
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(t.intermediate_values[2])
    # one MLflow run per trial, carrying the signature of every epoch it trained at step = epoch
    client = mlflow.MlflowClient(tracking)
    exp = client.get_experiment_by_name("examples")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id]) if r.info.run_name.startswith("trial")}
    assert sorted(runs) == ["trial-000", "trial-001", "trial-002"]
    for t in trials:
        history = client.get_metric_history(runs[f"trial-{t.number:03d}"].info.run_id, "sig/degree/mean")
        assert [m.step for m in history] == sorted(t.intermediate_values)
        assert [m.value for m in history] == pytest.approx(
            [t.system_attrs[EPOCH_ATTR.format(e)]["sig/degree/mean"] for e in sorted(t.intermediate_values)])


@pytest.mark.slow
def test_the_hydra_example_sweeps_a_user_network(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    out = subprocess.run(["bash", str(ROOT / "examples" / "user_model" / "run.sh"), "hydra.sweeper.n_trials=3",
                          "trainer.epochs=2", "data.train_size=200", "data.val_size=100", "data.test_size=100",
                          "trainer.threads=1", f"storage.url={storage}", f"mlflow.tracking_uri={tracking}",
                          f"hydra.sweep.dir={tmp_path / 'multirun'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name="user_model", storage=storage)
    assert len(study.trials) == 3
    assert {t.state for t in study.trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    client = mlflow.MlflowClient(tracking)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("user_model").experiment_id])
            if "trial" in r.data.tags]
    assert len(runs) == 3 and {r.data.tags["model"] for r in runs} == {"MyNet"}
    for r in runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "sig/degree/mean")] == \
               list(range(1, int(r.data.tags.get("pruned_at_epoch", 2)) + 1))


TRIALS = 8  # with fewer, studies of 4-epoch trainings seldom resume a pause (the last pass needs a third completed)


@pytest.mark.slow
@pytest.mark.parametrize("script, seed", [("optuna_forecast_pruner.py", 0), ("lightning_forecast_pruner.py", 1)])
def test_the_examples_pause_and_resume_with_epochgraph_optimize(script, seed, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--trials", str(TRIALS),
                          "--epochs", "4", "--train-size", "200", "--val-size", "100", "--batch-size", "50", "--pause",
                          "--seed", str(seed),
                          "--warm-start", str(ROOT / "bench" / "results" / "populations"), "--storage", storage,
                          "--tracking-uri", tracking, "--study-name", "s", "--checkpoint-dir", str(tmp_path / "ck")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name="s", storage=storage)
    resumed = [t for t in study.trials if "resumed_from" in t.user_attrs]
    assert len(study.trials) - len(resumed) == TRIALS  # the configurations, a resumed one counted once
    assert resumed  # with this seed the forecast pauses a trial that the study later resumes
    for t in study.trials:  # every trial's epochs from 1 on, a resumed one carrying its paused epochs
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
    for t in resumed:
        paused = study.trials[t.user_attrs["resumed_from"]]
        assert paused.system_attrs["paused_at_epoch"] == paused.last_step  # its checkpoint is of its last epoch
        assert all(t.intermediate_values[e] == v for e, v in paused.intermediate_values.items())
    # the checkpoints of the trials that resumed are gone; those still paused stay for a later resume
    still = [t for t in study.trials if t.system_attrs.get("paused_at_epoch") and
             t.number not in {r.user_attrs["resumed_from"] for r in resumed}]
    assert len(list((tmp_path / "ck").rglob("*.pt"))) == len(still)
    assert f"{len(study.trials)} trials:" in out.stdout
    assert f"({len(resumed)} of them resumed a paused trial)" in out.stdout
    if script.startswith("lightning"):  # a resumed trial's fit goes on in the MLflow run of the trial it resumes
        client = mlflow.MlflowClient(tracking)
        runs = client.search_runs([client.get_experiment_by_name("examples").experiment_id])
        assert len(runs) == TRIALS and {t.user_attrs["mlflow_run_id"] for t in study.trials} == \
            {r.info.run_id for r in runs}
        for r in runs:  # one curve, each epoch once: those of the last trial of its configuration
            last = max((t for t in study.trials if t.user_attrs["mlflow_run_id"] == r.info.run_id),
                       key=lambda t: len(t.intermediate_values))
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "sig/degree/mean")]
            assert steps == sorted(last.intermediate_values)
