"""Fault injection: a killed worker, an interrupted sweep, bad input, two workers on SQLite.

Each test injects the fault for real (SIGKILL, broken URLs, ...) and checks that nothing is lost:
every trial is accounted for in Optuna and MLflow, and no run is left RUNNING.
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY

BASE = [sys.executable, "-m", "epochgraph.cli.train"]


def _sweep_cmd(tmp_path, *overrides):
    return [*BASE, "+experiment=pruned_sweep", *TINY, f"storage.url=sqlite:///{tmp_path / 'optuna.db'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}", "hydra.sweeper.study_name=faults", "pruner=none",
            *overrides]


def _runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("pruned_sweep")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_killed_worker_is_failed_retried_and_its_run_closed(tmp_path):
    # 5000 epochs: the first trial is surely still training when it is killed, however fast the machine
    over = ["hydra.sweeper.n_trials=3", "trainer.epochs=5000", "storage.heartbeat_interval=1", "storage.grace_period=2",
            "storage.max_retry=1"]
    proc = subprocess.Popen(_sweep_cmd(tmp_path, *over), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(r.info.status == "RUNNING" and "trial" in r.data.tags
                                             for r in _runs(tmp_path)):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the worker dies mid-trial: no cleanup code runs
    proc.wait()
    assert any(r.info.status == "RUNNING" for r in _runs(tmp_path))
    time.sleep(3)  # longer than the grace period: the trial's heartbeat is stale
    done = subprocess.run(_sweep_cmd(tmp_path, *over[:1], "trainer.epochs=2", *over[2:]), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = Counter(t.state.name for t in study.trials)
    assert states["FAIL"] == 1 and states["COMPLETE"] == 3  # the killed trial failed, then retried
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") is not None]
    assert len(retried) == 1
    runs = [r for r in _runs(tmp_path) if "trial" in r.data.tags]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert len(killed) == 1 and killed[0].data.tags["state"] == "FAIL"
    assert "closed as KILLED" in done.stderr + done.stdout


def test_interrupted_sweep_resumes_without_rerunning(tmp_path):
    first = subprocess.run(_sweep_cmd(tmp_path, "hydra.sweeper.n_trials=2"), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(_sweep_cmd(tmp_path, "hydra.sweeper.n_trials=3"), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    runs = _runs(tmp_path)
    assert Counter(r.data.tags.get("trial") for r in runs if "trial" in r.data.tags) == {"0": 1, "1": 1, "2": 1}
    assert len([r for r in runs if r.data.tags.get("epochgraph.role") == "sweep"]) == 1


def test_two_workers_on_sqlite_lose_nothing(tmp_path):
    out = subprocess.run(_sweep_cmd(tmp_path, "hydra/launcher=local_workers", "hydra.sweeper.n_jobs=2",
                                    "hydra.sweeper.n_trials=4", "trainer.threads=1"),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    runs = [r for r in _runs(tmp_path) if "trial" in r.data.tags]
    assert sorted(int(r.data.tags["trial"]) for r in runs) == [0, 1, 2, 3]
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.parametrize("overrides, message", [
    (["storage.url=postgresql+psycopg2://u:secret@127.0.0.1:1/none"],
     "cannot open the Optuna storage storage.url='postgresql+psycopg2://u:***@127.0.0.1:1/none'"),
    (["optim.lr=tag(log,interval(0.0,1.0))"], "malformed search space entry 'optim.lr=tag(log,interval(0.0,1.0))'"),
    (["pruner=signature", "pruner.model_uri=models:/does-not-exist@champion"],
     "cannot build pruner=epochgraph.pruner.SignaturePruner: cannot load the predictor"),
    (["pruner=signature", "pruner.bound=2"], "bound=2"),
    (["optim.lr=-1"], "optim.lr=-1 must be a positive number"),
])
def test_bad_sweep_input_is_one_line_and_writes_nothing(tmp_path, overrides, message):
    proc = subprocess.run(_sweep_cmd(tmp_path, "hydra.sweeper.n_trials=1", *overrides), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("epochgraph: error:") and message in last, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert "secret" not in proc.stderr
    assert not [r for r in _runs(tmp_path) if r.info.status == "RUNNING"]


def test_unknown_pruner_name_lists_the_choices(tmp_path):
    proc = subprocess.run(_sweep_cmd(tmp_path, "pruner=nope"), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Could not find 'pruner/nope'" in proc.stderr and "signature" in proc.stderr


def test_sigterm_ends_the_run_killed_and_the_process(tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    proc = subprocess.Popen([*BASE, *TINY, "trainer.epochs=200", f"mlflow.tracking_uri={tracking}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient(tracking)
    deadline = time.time() + 120
    runs = []
    while time.time() < deadline and not runs:
        time.sleep(0.5)
        exp = client.get_experiment_by_name("epochgraph")
        runs = client.search_runs([exp.experiment_id]) if exp else []
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert client.get_run(runs[0].info.run_id).info.status == "KILLED"
