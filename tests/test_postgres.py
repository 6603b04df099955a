"""Two parallel workers against a real PostgreSQL server (Debian's package, started for the test)."""

import os
import subprocess
import sys
from collections import Counter

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests import pg
from tests.mlflow_server import mlflow_server
from tests.pausing import configurations, run_state

pytestmark = [pytest.mark.slow,  # a real server and two workers: minutes; make test (and CI) runs it
              pytest.mark.skipif(not pg.available(), reason="PostgreSQL 15 server binaries not installed")]


def test_two_workers_share_one_study_on_postgres(tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    with pg.postgres_server() as url:
        cmd = [sys.executable, "-m", "epochgraph.cli.worker", "+experiment=pruned_sweep", "storage=postgres",
               "hydra/launcher=local_workers", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
               "hydra.sweeper.n_trials=8", "hydra.sweeper.study_name=pg", "trainer.epochs=3", "trainer.threads=1",
               "data.train_size=600", "data.val_size=200", "data.test_size=100",
               # the forecast pruner (warm from the committed tables), pruning earlier than Optuna's threshold
               "pruner=forecast", "pruner.min_epoch=1", "pruner.combine=or",
               "pruner.base={_target_: optuna.pruners.ThresholdPruner, lower: 0.3, n_warmup_steps: 2}",
               f"mlflow.tracking_uri={tracking}",
               f"hydra.sweep.dir={tmp_path / 'multirun'}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "EPOCHGRAPH_STORAGE_URL": url})
        assert proc.returncode == 0, proc.stderr[-3000:]
        study = optuna.load_study(study_name="pg", storage=url)
        trials = configurations(study)  # with pruner=forecast_pause a resumed trial's configuration counts once
        resumed = len(study.get_trials()) - len(trials)
    states = Counter(t.state.name for t in trials)
    assert len(trials) == 8 and states["COMPLETE"] + states["PRUNED"] == 8
    assert states["PRUNED"] + resumed >= 1  # pruning (or pausing) decided in the worker processes, told by the sweeper
    # once a trial completed, the others were forecast in their workers, and the forecasts kept in the storage
    first = min(t.datetime_complete for t in trials if t.state.name == "COMPLETE")
    later = [t for t in trials if t.datetime_start > first]
    assert any("forecast_upper_001" in t.system_attrs for t in later)
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("pruned_sweep")
    runs = client.search_runs([exp.experiment_id], "tags.study = 'pg' and tags.trial != ''")
    # every configuration exactly once in MLflow (a resumed trial goes on in its paused run), with its outcome
    assert sorted(int(r.data.tags["trial"]) for r in runs) == sorted(t.number for t in trials)
    by_number = {t.number: t for t in trials}
    for r in runs:
        t = by_number[int(r.data.tags["trial"])]
        assert r.info.status == "FINISHED"
        assert r.data.tags["state"] == run_state(t)
        assert (r.data.tags.get("pruned") == "true") == (t.state.name == "PRUNED")
        assert t.user_attrs["mlflow_run_id"] == r.info.run_id
        # each epoch logged once, however often the configuration paused and resumed
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert steps == sorted(set(steps)) == sorted(t.intermediate_values)
    assert "password" not in str([r.data.params.get("storage.url") for r in runs])


EPOCHS = 3


def test_two_worker_processes_resume_each_paused_trial_once_through_the_tracking_servers_artifact_store(tmp_path):
    # two epochgraph-worker processes, as on two machines: the study on PostgreSQL, MLflow (runs, weights,
    # checkpoints) reached through a tracking server that serves the artifacts (make server), nothing shared on
    # disk; every odd-numbered trial is paused after epoch 1 and should resume once a trial completed
    with pg.postgres_server() as url, mlflow_server(tmp_path / "server") as tracking:
        cmd = [sys.executable, "-m", "epochgraph.cli.worker", "+experiment=pruned_sweep", "storage=postgres",
               "hydra.sweeper.n_trials=6", "hydra.sweeper.study_name=pgpause", f"trainer.epochs={EPOCHS}",
               "trainer.threads=1", "data.train_size=600", "data.val_size=200", "data.test_size=100",
               "pruner=none", "pruner._target_=tests.pausing.PauseOdd", "+pruner.at=1", "+pruner.after=1",
               f"mlflow.tracking_uri={tracking}"]
        env = {**os.environ, "EPOCHGRAPH_STORAGE_URL": url}
        logs = [tmp_path / f"worker{i}.log" for i in (0, 1)]
        workers = []
        for i, log in enumerate(logs):
            with open(log, "w") as out:
                workers.append(subprocess.Popen([*cmd, f"hydra.sweep.dir={tmp_path / f'multirun{i}'}"], stdout=out,
                                                stderr=subprocess.STDOUT, env=env))
        try:
            for w in workers:
                w.wait(timeout=900)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        said = [log.read_text() for log in logs]
        for w, text in zip(workers, said):
            assert w.returncode == 0, text[-3000:]
        study = optuna.load_study(study_name="pgpause", storage=url)
        trials, configs = study.get_trials(), configurations(study)
        client = MlflowClient(tracking)
        exp = client.get_experiment_by_name("pruned_sweep")
        runs = client.search_runs([exp.experiment_id], "tags.study = 'pgpause' and tags.trial != ''")
        histories = {r.info.run_id: [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
                     for r in runs}
        leftover = {r.info.run_id: client.list_artifacts(r.info.run_id, "checkpoint") for r in runs}
    # six configurations, all trained to the end: the paused ones by a trial that resumed them
    assert len(configs) == 6 and Counter(t.state.name for t in configs) == {"COMPLETE": 6}, \
        [(t.number, t.state.name) for t in trials]
    # a trial asked beyond the budget (both workers asked for the last slot at once) stood down untrained
    assert all("withdrawn" in t.system_attrs for t in trials if t.state.name == "FAIL")
    paused = [t for t in trials if "paused_at_epoch" in t.system_attrs]
    resumers = Counter(t.user_attrs["resumed_from"] for t in trials if "resumed_from" in t.user_attrs)
    assert paused and resumers == {t.number: 1 for t in paused}  # each paused trial resumed, exactly once
    # both workers trained trials, and the resumptions are split between the processes that claimed them
    resumed_in = [text.count(" RESUMES trial ") for text in said]
    assert sum(resumed_in) == len(paused) and all("PAUSED" in t or "COMPLETE" in t for t in said)
    for t in paused:
        # its checkpoint went to the server's artifact store and came back from it; then it was deleted
        assert t.system_attrs["checkpoint"].startswith("runs:/")
        assert any(f"resumes trial {t.number} from its checkpoint of epoch 1" in text for text in said)
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
    assert not any((tmp_path / "server" / "artifacts").rglob("checkpoint/*.pt"))
    assert all(files == [] for files in leftover.values())
    # one MLflow run per configuration, each epoch trained once
    assert sorted(int(r.data.tags["first_trial"]) for r in runs) == sorted(
        t.user_attrs.get("resumed_from", t.number) for t in configs)
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["state"] == "COMPLETE"
        assert histories[r.info.run_id] == list(range(1, EPOCHS + 1)), histories
    assert {run_state(t) for t in paused} == {"PAUSED"}
