"""Two parallel workers against a real PostgreSQL server (Debian's package, started for the test)."""

import subprocess
import sys
from collections import Counter

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests import pg
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
                              env={**__import__("os").environ, "EPOCHGRAPH_STORAGE_URL": url})
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
