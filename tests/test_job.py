import math
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from epochgraph.training.job import run_job
from tests.conftest import TINY, compose_train


def test_job_logs_params_metrics_weights_and_tags(tracking_uri, tmp_path):
    cfg = compose_train([*TINY, "graph.enabled=false"], tracking_uri)
    job = run_job(cfg)
    client = MlflowClient(tracking_uri)
    run = client.get_run(job.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model"] == "lenet" and run.data.tags["dataset"] == "fashion_mnist"
    assert run.data.params["optim.lr"] == str(cfg.optim.lr) and run.data.params["model.name"] == "lenet"
    history = client.get_metric_history(job.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value == job.result.history[-1]["val_acc"]
    assert abs(run.data.metrics["test_acc"] - job.result.test_acc) < 1e-12
    names = [f.path for f in client.list_artifacts(job.run_id, "weights")]
    assert names == ["weights/epoch_001.safetensors", "weights/epoch_002.safetensors"]
    local = client.download_artifacts(job.run_id, "weights/epoch_002.safetensors", str(tmp_path))
    saved = load_file(local)
    final = job.result.model.state_dict()
    assert saved.keys() == final.keys() and all((saved[k] == final[k]).all() for k in saved)
    assert "config.yaml" in [f.path for f in client.list_artifacts(job.run_id)]


def test_keep_weights_stores_only_the_listed_epochs_and_the_last(tracking_uri):
    cfg = compose_train([*TINY, "graph.enabled=false", "trainer.epochs=3", "mlflow.keep_weights=[1]"],
                        tracking_uri)
    job = run_job(cfg)
    names = [f.path for f in MlflowClient(tracking_uri).list_artifacts(job.run_id, "weights")]
    assert names == ["weights/epoch_001.safetensors", "weights/epoch_003.safetensors"]
    metrics = MlflowClient(tracking_uri).get_run(job.run_id).data.metrics
    assert metrics["weights_saved_bytes"] == metrics["weights_bytes"] / 2  # 1 of 3 snapshots skipped


def test_diverged_run_ends_finished_and_tagged(tracking_uri):
    job = run_job(compose_train([*TINY, "graph.enabled=false", "optim.lr=1e6", "trainer.epochs=3"],
                                tracking_uri))
    run = MlflowClient(tracking_uri).get_run(job.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["diverged"] == "true"
    assert run.data.metrics["diverged"] == 1.0
    # no NaN point is logged (the UI would hide the metric); the epochs before the divergence stay
    client = MlflowClient(tracking_uri)
    points = {k: client.get_metric_history(job.run_id, k) for k in run.data.metrics}
    assert all(math.isfinite(p.value) for ps in points.values() for p in ps), points
    assert [p.step for p in points["val_acc"]] == list(range(1, job.result.epochs_run + 1))


@pytest.mark.slow  # a real process (the command, workers or a server): make test runs it
def test_cli_bad_value_is_one_line_and_leaves_no_run(tracking_uri):
    proc = subprocess.run(
        [sys.executable, "-m", "epochgraph.cli.train", "optim.lr=-1", f"mlflow.tracking_uri={tracking_uri}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "epochgraph: error: optim.lr=-1 must be a positive number, e.g. optim.lr=0.01")
    assert "Traceback" not in proc.stderr
    client = MlflowClient(tracking_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_run_names_put_the_outcome_first(tracking_uri):
    from epochgraph.store import tracking

    # the runs table shows about 16 characters of a trial's name: the outcome and the trial number fit
    names = [tracking.outcome_run_name(tracking.trial_run_name(n), tracking.trial_outcome(**kw)) for n, kw in (
        (3, {}), (27, {"pruned_at_epoch": 1}), (28, {"pruned_at_epoch": 10}), (2, {"diverged_at_epoch": 3}),
        (5, {"pruned_at_epoch": 2, "diverged_at_epoch": 2}))]
    assert names == ["✓ trial-003", "✂@1 trial-027", "✂@10 trial-028", "NaN@3 trial-002", "✂@2 trial-005"]
    assert max(map(len, names)) <= 15
    # a run that ends on an error or an interrupt carries that status first
    client = MlflowClient(tracking_uri)
    for error, status in ((RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")):
        try:
            with tracking.mlflow_run(client, "names", run_name="trial-001") as run_id:
                raise error
        except (RuntimeError, KeyboardInterrupt):
            pass
        run = client.get_run(run_id)
        assert (run.info.run_name, run.info.status) == (f"{status.lower()} trial-001", status)
    with tracking.mlflow_run(client, "names", run_name="trial-004") as run_id:
        pass
    assert client.get_run(run_id).info.run_name == "trial-004"  # a finished run keeps its name


def test_a_locked_sqlite_store_is_written_again_and_other_errors_are_not(monkeypatch):
    from epochgraph.store import storage

    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    tries = []

    def locked_twice():
        tries.append(1)
        if len(tries) <= 2:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "written"

    assert storage.while_locked(locked_twice) == "written" and len(tries) == 3
    with pytest.raises(ValueError, match="other"):
        storage.while_locked(lambda: (_ for _ in ()).throw(ValueError("other")))


def test_an_interrupted_run_that_cannot_be_closed_still_ends_with_the_interrupt(tracking_uri, monkeypatch, caplog):
    from epochgraph.store import storage, tracking

    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    client = tracking.get_client(tracking_uri)
    monkeypatch.setattr(client, "set_terminated", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("(sqlite3.OperationalError) database is locked")))
    with pytest.raises(KeyboardInterrupt):
        with tracking.mlflow_run(client, "exp", run_name="r"):
            raise KeyboardInterrupt
    assert any("could not be closed as KILLED: (sqlite3.OperationalError) database is locked" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_an_interrupt_dropped_in_a_finalizer_is_raised_again_at_the_next_check(signum):
    # Python raises a signal's exception wherever the main thread is; inside a weakref callback or __del__ (a
    # library's garbage collection) it is printed as "Exception ignored" and dropped: a lost Ctrl-C or SIGTERM
    import os
    import signal
    import weakref

    from epochgraph.errors import Terminated, check_interrupt, sigterm_as_exception

    class Held:
        pass

    def collected(ref):
        os.kill(os.getpid(), getattr(signal, signum))  # lands while the callback runs
        for _ in range(10_000):  # bytecode boundaries: the handler's exception is raised in here, and dropped
            pass

    expected = Terminated if signum == "SIGTERM" else KeyboardInterrupt
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in a command at a terminal
    printed, hook = [], sys.unraisablehook
    sys.unraisablehook = printed.append  # where Python prints "Exception ignored ... Traceback"
    try:
        with pytest.raises(expected):
            with sigterm_as_exception():
                held = Held()
                ref = weakref.ref(held, collected)
                del held  # the callback ran, its exception dropped: the block goes on
                assert ref() is None
                check_interrupt()  # the training loop's next batch: raised again here
        check_interrupt()  # the block is over: nothing pending
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert printed == []  # the dropped interrupt, raised again, is not printed as a traceback
        assert sys.unraisablehook == printed.append  # other unraisable exceptions: printed as before the block
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGINT, before)
