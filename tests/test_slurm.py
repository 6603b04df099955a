"""Pruned sweeps through a real SLURM cluster (`hydra/launcher=slurm`): a one-node cluster started for the tests
(`scripts/slurm.sh`), every trial a SLURM job, one study on SQLite; a job ended by ``scancel`` fails its trial,
which is re-queued and its MLflow run closed, as for a killed worker (tests/test_faults.py)."""

import re
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest

from epochgraph.store.tracking import get_client
from tests import slurm
from tests.pausing import configurations, run_state

pytestmark = [pytest.mark.slow,  # a real cluster, jobs that import torch: minutes; make test (and CI) runs them
              pytest.mark.skipif(not slurm.available(), reason="slurm-wlm and munge not installed (make setup)")]

SMALL = ["trainer.threads=1", "data.train_size=600", "data.val_size=200", "data.test_size=100"]


@pytest.fixture(scope="module")
def cluster():
    with slurm.slurm_cluster() as env:
        yield env


def _sweep_cmd(tmp_path, *overrides):
    return [sys.executable, "-m", "epochgraph.cli.train", "+experiment=pruned_sweep", "hydra/launcher=slurm",
            # the node has the machine's CPUs: one per job, so that two trials train at once
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.sweeper.study_name=slurm",
            f"storage.url=sqlite:///{tmp_path / 'optuna.db'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}", *SMALL, *overrides]


def _study(tmp_path):
    return optuna.load_study(study_name="slurm", storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def _trial_runs(tmp_path):
    client = get_client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("pruned_sweep")
    return [r for r in client.search_runs([exp.experiment_id]) if "trial" in r.data.tags] if exp else []


def _submitted(log: str) -> list[str]:
    """The SLURM jobs the sweep says it submitted (``SLURM jobs 5_0, 5_1 (logs: ...)``)."""
    return [j for line in re.findall(r"SLURM jobs ([0-9_, ]+) \(logs", log) for j in line.split(", ")]


def test_pruned_sweep_through_slurm_accounts_for_every_trial(cluster, tmp_path):
    proc = subprocess.run(
        _sweep_cmd(tmp_path, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "trainer.epochs=3",
                   # the forecast pruner (warm from the committed tables), pruning earlier than Optuna's threshold
                   "pruner=forecast", "pruner.min_epoch=1", "pruner.combine=or",
                   "pruner.base={_target_: optuna.pruners.ThresholdPruner, lower: 0.3, n_warmup_steps: 2}"),
        capture_output=True, text=True, timeout=1800, env=cluster)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    study = _study(tmp_path)
    # a job SLURM ended before it ran (seen once beside two busy loops and another cluster: no log, no outcome) fails
    # its trial, which is re-queued with the same parameters: accounted for, and said so
    failed = [t for t in study.get_trials() if t.state.name == "FAIL"]
    retries = {t.system_attrs.get("failed_trial") for t in study.get_trials()}
    for t in failed:
        assert t.number in retries and f"trial {t.number}: FAIL, re-queued with the same parameters" in log, \
            log[-4000:]
        assert re.search(rf"trial +{t.number}: SLURM job \S+ ended \S+ without an outcome", log), log[-4000:]
    # with pruner=forecast_pause a resumed trial's configuration counts once
    trials = [t for t in configurations(study) if t.state.name != "FAIL"]
    resumed = len(study.get_trials()) - len(trials) - len(failed)
    states = Counter(t.state.name for t in trials)
    assert len(trials) == 4 and states["COMPLETE"] + states["PRUNED"] == 4, (states, log[-4000:])
    assert states["PRUNED"] + resumed >= 1  # decided inside the SLURM jobs, told by the sweeper
    runs = _trial_runs(tmp_path)
    assert sorted(int(r.data.tags["trial"]) for r in runs) == sorted(t.number for t in trials)  # each once
    by_number = {t.number: t for t in trials}
    for r in runs:
        t = by_number[int(r.data.tags["trial"])]
        assert r.info.status == "FINISHED" and r.data.tags["state"] == run_state(t)
        assert (r.data.tags.get("pruned") == "true") == (t.state.name == "PRUNED")
        assert t.user_attrs["mlflow_run_id"] == r.info.run_id
    # each trial trained in a SLURM job of its own, one the sweep submitted (arrays of up to two; a resumed trial
    # is a job too, and its run names the last job that trained it)
    jobs = _submitted(log)
    trained_in = {r.data.tags["slurm_job"] for r in runs}
    assert len(jobs) == len(study.get_trials()) and trained_in <= set(jobs)
    assert len(trained_in) == len(runs)  # a job of its own for each
    for job in sorted(trained_in) if failed else jobs:
        out = tmp_path / "multirun" / ".submitit" / job / f"{job}_0_log.out"
        assert "Job completed successfully" in out.read_text()


def _wait_for_epoch(tmp_path, proc, log, number: int, epoch: int):
    """The MLflow run trial ``number`` trains in, once it has logged ``epoch`` in its SLURM job."""
    client = get_client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    deadline = time.time() + 900
    while True:
        for r in _trial_runs(tmp_path):
            if r.data.tags["trial"] == str(number) and r.info.status == "RUNNING" and "val_acc" in r.data.metrics:
                if max(m.step for m in client.get_metric_history(r.info.run_id, "val_acc")) >= epoch:
                    return r
        said = log.read_text()[-3000:] if log.exists() else ""
        assert proc.poll() is None, f"the sweep ended (status {proc.returncode}) before trial {number} trained:\n{said}"
        assert time.time() < deadline, f"trial {number} has not trained epoch {epoch} after 900 s:\n{said}"
        time.sleep(0.2)


LONG = 120  # epochs of the trial the next test cancels


def test_scancel_of_a_resumed_trial_fails_it_requeues_it_from_the_same_checkpoint_and_closes_its_run(
        cluster, tmp_path):
    # trial 0 is paused after epoch 1 and resumed at once as trial 1, in a new SLURM job; that job is cancelled
    # once it trained epoch 2 (of 120: it is surely still training then; 30 were not: idle, a tiny epoch takes
    # 0.6 s); the retry (trial 2, a third job) goes on from trial 0's checkpoint again and is stopped for good
    # one epoch later (tests.pausing.PauseThenStopRetries): it need not train LONG epochs
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_sweep_cmd(tmp_path, "hydra.sweeper.n_trials=1", f"trainer.epochs={LONG}",
                                           "pruner=none", "pruner._target_=tests.pausing.PauseThenStopRetries",
                                           "storage.max_retry=1", "mlflow.keep_weights=[1]"),
                                stdout=out, stderr=subprocess.STDOUT, env=cluster, start_new_session=True)
    try:
        run = _wait_for_epoch(tmp_path, proc, log, 1, 2)
        job = run.data.tags["slurm_job"]
        subprocess.run(["scancel", job], check=True, env=cluster, timeout=60)
        proc.wait(timeout=1800)  # the re-queued trial trains on from the checkpoint in a new job
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = log.read_text()
    assert proc.returncode == 0, said[-3000:]
    assert f"trial   1: SLURM job {job} ended CANCELLED without an outcome" in said
    assert "trial 1: FAIL, re-queued with the same parameters" in said
    study = _study(tmp_path)
    assert [t.state.name for t in study.trials] == ["PRUNED", "FAIL", "PRUNED"]
    paused, killed, retried = study.trials
    assert paused.system_attrs["paused_at_epoch"] == 1 and killed.params == retried.params == paused.params
    assert killed.user_attrs["resumed_from"] == retried.user_attrs["resumed_from"] == 0  # the same chain
    assert retried.system_attrs["failed_trial"] == 1  # Optuna's retry of trial 1
    checkpoint = paused.system_attrs["checkpoint"]
    # one MLflow run for the configuration: opened by trial 0, reopened by trial 1 and again by its retry
    runs = _trial_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.run_id == run.info.run_id == checkpoint.split("/")[1]
    final = runs[0]
    assert (final.info.status, final.data.tags["state"], final.data.tags["trial"]) == ("FINISHED", "PRUNED", "2")
    assert final.data.tags["resumed_from_epoch"] == "1" and final.data.tags["slurm_job"] not in ("", job)
    assert final.data.metrics["epochs_run"] == 2  # epoch 1 from the checkpoint, then one epoch until stopped
    # the cancelled job said so in one line, no traceback, and closed the run (the retry reopened it)
    err = (tmp_path / "multirun" / ".submitit" / job / f"{job}_0_log.err").read_text()
    assert (f"epochgraph: terminated (SIGTERM); MLflow run {final.info.run_id} closed as KILLED; the sweep fails "
            "this trial and re-queues it") in err
    assert "Traceback" not in err
    # the retry went on from the same checkpoint: the epochs the killed job trained after it are trained again,
    # to the same values (logged twice, once by each job); epoch 1, from the checkpoint, is logged once
    client = get_client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    history = client.get_metric_history(final.info.run_id, "val_acc")
    by_step: dict[int, set[float]] = {}
    for m in history:
        by_step.setdefault(m.step, set()).add(m.value)
    assert [m.step for m in history].count(1) == 1 and [m.step for m in history].count(2) == 2
    assert all(len(values) == 1 for values in by_step.values()), by_step
    assert retried.intermediate_values == {1: paused.intermediate_values[1], 2: by_step[2].pop()}
    # a pause that ended for good deletes its checkpoint
    assert client.list_artifacts(final.info.run_id, "checkpoint") == []
