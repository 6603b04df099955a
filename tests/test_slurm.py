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
    trials = configurations(study)  # with pruner=forecast_pause a resumed trial's configuration counts once
    resumed = len(study.get_trials()) - len(trials)
    states = Counter(t.state.name for t in trials)
    assert len(trials) == 4 and states["COMPLETE"] + states["PRUNED"] == 4, states
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
    assert len(jobs) == len(study.get_trials()) and {r.data.tags["slurm_job"] for r in runs} <= set(jobs)
    for job in jobs:
        out = tmp_path / "multirun" / ".submitit" / job / f"{job}_0_log.out"
        assert "Job completed successfully" in out.read_text()


def _wait_for_training_trial(tmp_path, proc, log, number: int):
    """The MLflow run of trial ``number`` once it has trained an epoch in its SLURM job."""
    deadline = time.time() + 900
    while True:
        runs = [r for r in _trial_runs(tmp_path) if r.data.tags["trial"] == str(number)
                and r.info.status == "RUNNING" and "train_loss" in r.data.metrics]
        if runs:
            return runs[0]
        said = log.read_text()[-3000:] if log.exists() else ""
        assert proc.poll() is None, f"the sweep ended (status {proc.returncode}) before trial {number} trained:\n{said}"
        assert time.time() < deadline, f"trial {number} has not trained an epoch after 900 s:\n{said}"
        time.sleep(0.2)


LONG = 120  # epochs of the trial the next test cancels


def test_scancel_fails_the_trial_requeues_it_and_closes_its_run(cluster, tmp_path):
    # 120 epochs: the first trial is surely still training when its job is cancelled after its first epoch (30
    # were not: idle, a tiny epoch takes 0.6 s and the whole trial ended before the cancel)
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        # the retry (a new SLURM job) is pruned after its first epoch (tests.pausing.PruneRetries): it need not
        # train LONG epochs again
        proc = subprocess.Popen(_sweep_cmd(tmp_path, "hydra.sweeper.n_trials=1", f"trainer.epochs={LONG}",
                                           "pruner=none", "pruner._target_=tests.pausing.PruneRetries",
                                           "storage.max_retry=1", "mlflow.keep_weights=[1]"),
                                stdout=out, stderr=subprocess.STDOUT, env=cluster, start_new_session=True)
    try:
        run = _wait_for_training_trial(tmp_path, proc, log, 0)
        job = run.data.tags["slurm_job"]
        subprocess.run(["scancel", job], check=True, env=cluster, timeout=60)
        proc.wait(timeout=1800)  # the re-queued trial trains its epochs in a new job
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = log.read_text()
    assert proc.returncode == 0, said[-3000:]
    assert f"trial   0: SLURM job {job} ended CANCELLED without an outcome" in said
    assert "trial 0: FAIL, re-queued with the same parameters" in said
    study = _study(tmp_path)
    assert [t.state.name for t in study.trials] == ["FAIL", "PRUNED"]
    assert study.trials[1].params == study.trials[0].params
    assert study.trials[1].system_attrs["failed_trial"] == 0  # Optuna's retry of trial 0
    runs = {int(r.data.tags["trial"]): r for r in _trial_runs(tmp_path)}
    assert sorted(runs) == [0, 1]
    killed, retried = runs[0], runs[1]
    assert (killed.info.status, killed.info.run_name, killed.data.tags["state"]) == ("KILLED", "killed trial-000",
                                                                                      "FAIL")
    # the job closed its own run on SLURM's SIGTERM (a run left RUNNING would be closed by the sweeper, which
    # says "its worker stopped")
    assert "error" not in killed.data.tags
    client = get_client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    assert 1 <= len(client.get_metric_history(killed.info.run_id, "val_acc")) < LONG  # stopped mid-training
    # the cancelled job said so in one line, no traceback
    err = (tmp_path / "multirun" / ".submitit" / job / f"{job}_0_log.err").read_text()
    assert (f"epochgraph: terminated (SIGTERM); MLflow run {killed.info.run_id} closed as KILLED; the sweep fails "
            "this trial and re-queues it") in err
    assert "Traceback" not in err
    assert (retried.info.status, retried.data.tags["state"]) == ("FINISHED", "PRUNED")
    assert retried.data.tags["slurm_job"] != job
    assert retried.data.metrics["epochs_run"] == 1  # it trained in its own job, until its pruner stopped it
