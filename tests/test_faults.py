"""Fault injection: a killed worker, an interrupted sweep, bad input, two workers on SQLite.

Each test injects the fault for real (SIGKILL, broken URLs, ...) and checks that nothing is lost:
every trial is accounted for in Optuna and MLflow, and no run is left RUNNING.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import optuna
import pytest
from mlflow.tracking import MlflowClient

from epochgraph.errors import EpochgraphError
from epochgraph.store.tracking import get_client
from tests import inprocess
from tests.conftest import TINY, free_port

pytestmark = pytest.mark.slow  # real processes, signals and servers: minutes; CI runs them

BASE = [sys.executable, "-m", "epochgraph.cli.train"]


def _as_from_a_terminal() -> None:
    """In the child, before it runs: Ctrl-C's default action. A shell without job control starts its
    background commands with SIGINT ignored, and Python then installs no KeyboardInterrupt handler; a user
    at a terminal presses Ctrl-C on a command whose SIGINT is not ignored, which is what these tests check."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_or_kill(proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait for the interrupted command to end; one that does not is killed (no orphan keeps training)."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _sweep_cmd(tmp_path, *overrides):
    return [*BASE, "+experiment=pruned_sweep", *TINY, f"storage.url=sqlite:///{tmp_path / 'optuna.db'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}", "hydra.sweeper.study_name=faults", "pruner=none",
            *overrides]


def _sweep(tmp_path, *overrides):
    """The sweep command run again in this process (`tests.inprocess`): for the start that follows a fault, where
    the fault (a kill, a signal) was injected into a real process before it."""
    return inprocess.run("epochgraph.cli.train", _sweep_cmd(tmp_path, *overrides)[len(BASE):])


def _runs(tmp_path):
    client = get_client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("pruned_sweep")
    return client.search_runs([exp.experiment_id]) if exp else []


def _wait_for_running_trial_run(tmp_path, proc, log=None) -> None:
    deadline = time.time() + 300
    # a trial run that has logged an epoch: its training loop (and its signal handling) is surely running
    while not any(r.info.status == "RUNNING" and "trial" in r.data.tags and "train_loss" in r.data.metrics
                  for r in _runs(tmp_path)):
        said = log.read_text()[-3000:] if log is not None and log.exists() else ""
        assert proc.poll() is None, f"the sweep ended (status {proc.returncode}) before its first trial:\n{said}"
        assert time.time() < deadline, f"no trial has trained an epoch after 300 s:\n{said}"
        time.sleep(0.5)


def _kill_mid_trial(tmp_path, over) -> None:
    # 5000 epochs: the first trial is surely still training when it is killed, however fast the machine
    log = tmp_path / "killed-sweep.log"
    with open(log, "w") as out:  # kept: what the sweep said, if it ends before it can be killed
        proc = subprocess.Popen(_sweep_cmd(tmp_path, *over, "trainer.epochs=5000"), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _wait_for_running_trial_run(tmp_path, proc, log)
    os.killpg(proc.pid, signal.SIGKILL)  # the worker dies mid-trial: no cleanup code runs
    proc.wait()
    assert any(r.info.status == "RUNNING" for r in _runs(tmp_path))


def _killed_trial_accounted_for(tmp_path, done, complete: int) -> None:
    assert done.returncode == 0, done.stderr[-2000:]
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = Counter(t.state.name for t in study.trials)
    assert states == {"FAIL": 1, "COMPLETE": complete}  # the killed trial failed, then retried
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") is not None]
    assert len(retried) == 1 and retried[0].params == study.trials[0].params
    runs = [r for r in _runs(tmp_path) if "trial" in r.data.tags]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert len(killed) == 1 and killed[0].data.tags["state"] == "FAIL"
    assert killed[0].info.run_name == "killed trial-000"
    assert "closed as KILLED" in done.stderr + done.stdout


def test_killed_worker_is_failed_retried_and_its_run_closed(tmp_path):
    over = ["hydra.sweeper.n_trials=3", "storage.heartbeat_interval=1", "storage.grace_period=2",
            "storage.max_retry=1"]
    _kill_mid_trial(tmp_path, over)
    time.sleep(3)  # longer than the grace period: the trial's heartbeat is stale when the next sweep starts
    done = _sweep(tmp_path, *over, "trainer.epochs=2")
    _killed_trial_accounted_for(tmp_path, done, complete=3)


GRACE = 6  # seconds: the grace period of the next test


def test_sweep_waits_for_a_killed_trial_says_so_and_closes_its_run(tmp_path):
    over = ["hydra.sweeper.n_trials=1", "storage.heartbeat_interval=1", f"storage.grace_period={GRACE}",
            "storage.max_retry=1"]
    _kill_mid_trial(tmp_path, over)
    # restarted at once, the killed trial still looks alive and fills the budget: the sweep waits for it,
    # says for how long, fails it once stale, closes its run (while sweeping, not at a start) and retries it.
    # Its heartbeat is kept fresh here until the sweep says it waits: however long the restart takes on a busy
    # machine, the sweep finds it alive, and it goes stale GRACE seconds later (not a fixed long grace period)
    log = tmp_path / "restarted-sweep.log"
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    killed = optuna.load_study(study_name="faults", storage=storage).trials[0]
    storage.record_heartbeat(killed._trial_id)
    with open(log, "w") as out:
        proc = subprocess.Popen(_sweep_cmd(tmp_path, *over, "trainer.epochs=2"), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 600
        while "waiting for trial 0" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            storage.record_heartbeat(killed._trial_id)
            time.sleep(0.3)
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = log.read_text()
    _killed_trial_accounted_for(tmp_path, subprocess.CompletedProcess(proc.args, proc.returncode, said, ""),
                                complete=1)
    assert (f"waiting for trial 0, still RUNNING in the study (another worker's, or one whose process died); a trial "
            f"without a heartbeat for {GRACE} s (storage.grace_period) is failed and retried here, at the latest in"
            ) in said


def test_interrupted_sweep_resumes_without_rerunning(tmp_path):
    first = _sweep(tmp_path, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-2000:]
    again = _sweep(tmp_path, "hydra.sweeper.n_trials=3")
    assert again.returncode == 0
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    # the resumed sweep samples new configurations, not the first ones again
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3
    runs = _runs(tmp_path)
    assert Counter(r.data.tags.get("trial") for r in runs if "trial" in r.data.tags) == {"0": 1, "1": 1, "2": 1}
    assert len([r for r in runs if r.data.tags.get("epochgraph.role") == "sweep"]) == 1


def test_two_workers_on_sqlite_lose_nothing(tmp_path):
    out = subprocess.run(_sweep_cmd(tmp_path, "hydra/launcher=local_workers", "hydra.sweeper.n_jobs=2",
                                    "hydra.sweeper.n_trials=4", "trainer.threads=1"),
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    runs = [r for r in _runs(tmp_path) if "trial" in r.data.tags]
    assert sorted(int(r.data.tags["trial"]) for r in runs) == [0, 1, 2, 3]
    assert all(r.info.status == "FINISHED" for r in runs)



CLOSED_PORT = free_port()  # nothing listens there


# the first case runs as a real process (the exit status a shell sees, nothing on the terminal but the line, the
# password nowhere); the others are about their message and run the same command in this process (tests.inprocess)
@pytest.mark.parametrize("overrides, message", [
    pytest.param(["storage.url=postgresql+psycopg2://u:secret@127.0.0.1:1/none"],
                 "cannot open the Optuna storage storage.url='postgresql+psycopg2://u:***@127.0.0.1:1/none'",
                 marks=pytest.mark.real_process),
    (["optim.lr=tag(log,interval(0.0,1.0))"], "malformed search space entry 'optim.lr=tag(log,interval(0.0,1.0))'"),
    (["pruner=signature", "pruner.model_uri=models:/does-not-exist@champion"],
     "cannot build pruner=epochgraph.search.pruner.SignaturePruner: cannot load the predictor"),
    (["pruner=signature", "pruner.bound=2"], "bound=2"),
    (["optim.lr=-1"], "optim.lr=-1 must be a positive number"),
    # a bad value the search space reaches, not one the first trial happens to draw
    (["optim.lr=interval(-1.0, 0.1)"],
     "optim.lr=-1.0 must be a positive number, e.g. optim.lr=0.01 (the search space reaches optim.lr=-1.0)"),
    (["optim.momentum=choice(0.5, 1.5)"],
     "optim.momentum=1.5 must be in [0, 1), e.g. optim.momentum=0.9 (the search space reaches optim.momentum=1.5)"),
    ([f"mlflow.tracking_uri=http://127.0.0.1:{CLOSED_PORT}"],
     f"cannot reach the MLflow tracking server at mlflow.tracking_uri='http://127.0.0.1:{CLOSED_PORT}': "
     "connection refused; start it (make server) or fix the URI"),
])
def test_bad_sweep_input_is_one_line_and_writes_nothing(tmp_path, overrides, message, request):
    cmd = _sweep_cmd(tmp_path, "hydra.sweeper.n_trials=1", *overrides)
    if request.node.get_closest_marker("real_process"):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    else:
        proc = inprocess.run("epochgraph.cli.train", cmd[len(BASE):])
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("epochgraph: error:") and message in last, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert "secret" not in proc.stderr
    assert _runs(tmp_path) == []  # no parent run, no trial run
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert not (tmp_path / "optuna.db").exists() or optuna.get_all_study_names(storage) == []


class _FailingServer(BaseHTTPRequestHandler):
    """Answers every request with HTTP 503, as an overloaded or half-started server would; counts them."""

    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - the http.server API
        type(self).requests.append(self.path)
        self.send_response(503)
        self.end_headers()

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


def test_failing_tracking_server_is_asked_once_and_reported_in_one_line(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        proc = inprocess.run("epochgraph.cli.train", [*TINY, f"mlflow.tracking_uri={uri}"])
    finally:
        server.shutdown()
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"epochgraph: error: the MLflow tracking server at mlflow.tracking_uri='{uri}' answered HTTP 503 to a "
        "search of experiments; start it (make server) or fix the URI")
    assert "Traceback" not in proc.stderr
    assert len(_FailingServer.requests) == 1  # one request, no retries


def test_first_uses_of_a_new_store_at_once_do_not_race(tmp_path):
    """Several processes opening a new embedded store at the same instant (two first sweeps) all succeed."""
    script = (
        "import sys, time\n"
        "start = float(sys.argv[1])\n"
        "from epochgraph.store import tracking\n"
        "from epochgraph.store.storage import make_storage\n"
        "while time.time() < start: time.sleep(0.001)\n"
        f"tracking.get_client('sqlite:///{tmp_path}/mlruns/mlflow.db')\n"
        f"make_storage({{'url': 'sqlite:///{tmp_path}/optuna.db', 'heartbeat_interval': 30}})\n"
        "print('opened')\n"
    )
    start = time.time() + 8  # after every process has imported MLflow and Optuna
    procs = [subprocess.Popen([sys.executable, "-c", script, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "opened", err[-1500:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert [e.name for e in client.search_experiments()] == ["Default"]


def test_a_new_store_opened_at_once_by_a_process_without_the_lock_does_not_fail_ours(tmp_path):
    """``mlflow ui`` (or a user's script) creating a new store's schema while a sweep opens it: the sweep waits."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    (tmp_path / "mlruns").mkdir()
    wait = "import sys, time\nstart = float(sys.argv[1])\n"
    plain = wait + ("from mlflow.tracking import MlflowClient\nwhile time.time() < start: time.sleep(0.001)\n"
                    f"MlflowClient({uri!r}).search_experiments()\n")
    ours = wait + ("from epochgraph.store import tracking\nwhile time.time() < start: time.sleep(0.001)\n"
                   f"tracking.get_client({uri!r})\nprint('opened')\n")
    start = time.time() + 8  # after both have imported MLflow
    others = [subprocess.Popen([sys.executable, "-c", plain, str(start)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) for _ in range(2)]
    proc = subprocess.run([sys.executable, "-c", ours, str(start)], capture_output=True, text=True, timeout=900)
    for other in others:
        other.wait(timeout=900)
    assert proc.returncode == 0 and proc.stdout.strip() == "opened", proc.stderr[-1500:]


def _half_created(db, runs: int) -> None:
    """Leave ``db`` as a migration that died leaves it: an older revision and Alembic's temporary table."""
    import sqlite3

    client = MlflowClient(f"sqlite:///{db}")
    for i in range(runs):
        client.create_run("0", run_name=f"r{i}")
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = 'a1b2c3d4e5f6'")
    con.execute("CREATE TABLE _alembic_tmp_tags (key VARCHAR(250), value VARCHAR(5000))")
    con.commit()
    con.close()
    for path in db.parent.glob(db.name + "*"):
        os.utime(path, (time.time() - 3600, time.time() - 3600))  # nobody has written it since


def test_a_new_store_left_half_created_is_created_again_and_one_holding_runs_is_named(tmp_path):
    from epochgraph.store import tracking

    empty = tmp_path / "empty" / "mlflow.db"
    empty.parent.mkdir()
    _half_created(empty, runs=0)
    client = tracking.get_client(f"sqlite:///{empty}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert tracking._schema_of(empty)[0] == tracking._head_revision()
    assert list(empty.parent.glob(".*.new")) == []  # the file it was built in is gone

    used = tmp_path / "used" / "mlflow.db"
    used.parent.mkdir()
    _half_created(used, runs=2)
    with pytest.raises(EpochgraphError, match=r"holds 2 runs but its schema stopped at revision a1b2c3d4e5f6 .*"
                                              r"back it up and run 'mlflow db upgrade sqlite:///.*used/mlflow.db'"):
        tracking.get_client(f"sqlite:///{used}")
    assert tracking._schema_of(used)[2] == 2  # nothing lost


def test_opening_retries_while_the_schema_is_being_created_and_not_for_a_broken_store(tmp_path, monkeypatch):
    from epochgraph.store import tracking

    calls = []
    real = MlflowClient.search_experiments

    def mid_creation(self, *args, **kwargs):  # what MLflow raised here, caught by another process's migration
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("dimension_attributes")
        if len(calls) == 2:
            raise RuntimeError("(sqlite3.OperationalError) table _alembic_tmp_experiments already exists")
        return real(self, *args, **kwargs)

    slept = []
    monkeypatch.setenv("EPOCHGRAPH_CACHE_DIR", "off")  # the schema built by MLflow's migrations, not copied
    monkeypatch.setattr(tracking.time, "sleep", slept.append)
    monkeypatch.setattr(MlflowClient, "search_experiments", mid_creation)
    assert tracking.get_client(f"sqlite:///{tmp_path}/a/mlflow.db") is not None
    assert len(calls) == 4  # 3 to build the schema aside (2 caught mid-creation), 1 to open it
    assert slept == [0.5, 1.0]
    broken = tmp_path / "broken.db"
    broken.write_text("not a database")
    os.utime(broken, (time.time() - 3600, time.time() - 3600))  # an old store, not one being created
    monkeypatch.setattr(MlflowClient, "search_experiments", real)
    slept.clear()
    with pytest.raises(EpochgraphError, match="cannot open the MLflow store .*broken.db"):
        tracking.get_client(f"sqlite:///{broken}")
    assert slept == []  # a broken store is said at once


def test_unknown_pruner_name_lists_the_choices(tmp_path):
    proc = subprocess.run(_sweep_cmd(tmp_path, "pruner=nope"), capture_output=True, text=True, timeout=1200)
    assert proc.returncode != 0
    assert "Could not find 'pruner/nope'" in proc.stderr and "signature" in proc.stderr


@pytest.mark.parametrize("sig, status, said", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                               (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_interrupt_ends_the_run_killed_with_one_line(tmp_path, sig, status, said):
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*BASE, *TINY, "trainer.epochs=5000", f"mlflow.tracking_uri={tracking}"],
                                stdout=subprocess.DEVNULL, stderr=out, preexec_fn=_as_from_a_terminal)
    client = get_client(tracking)
    deadline = time.time() + 300
    runs = []
    while not runs:  # until the training has logged an epoch
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
        exp = client.get_experiment_by_name("epochgraph")
        runs = [r for r in client.search_runs([exp.experiment_id]) if "train_loss" in r.data.metrics] if exp else []
    time.sleep(1.0)
    proc.send_signal(sig)
    _wait_or_kill(proc)
    err = log.read_text()
    assert proc.returncode == status
    run_id = runs[0].info.run_id
    assert err.strip().splitlines()[-1] == f"epochgraph: {said}; MLflow run {run_id} closed as KILLED"
    assert "Traceback" not in err
    assert client.get_run(run_id).info.status == "KILLED"


def test_interrupted_sweep_ends_its_trial_at_once_and_resumes_it(tmp_path):
    over = ["hydra.sweeper.n_trials=2", "storage.max_retry=1"]
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:  # a file, not a pipe: nothing blocks the sweep however much it says
        proc = subprocess.Popen(_sweep_cmd(tmp_path, *over, "trainer.epochs=5000"), stdout=subprocess.DEVNULL,
                                stderr=out, preexec_fn=_as_from_a_terminal)
    _wait_for_running_trial_run(tmp_path, proc, log)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _wait_or_kill(proc)
    err = log.read_text()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "epochgraph: interrupted (Ctrl-C); trial 0: FAIL, re-queued with the same parameters; the sweep's MLflow "
        "runs closed as KILLED; run the same command again to resume study 'faults'")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="faults", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]  # nothing left RUNNING
    assert study.trials[1].params == study.trials[0].params
    runs = _runs(tmp_path)
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [("killed faults", "KILLED"),
                                                                       ("killed trial-000", "KILLED")]
    # the next start trains at once (no stale trial to wait for): the interrupted configuration first
    again = _sweep(tmp_path, *over, "trainer.epochs=2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "waiting for trial" not in again.stderr + again.stdout
    study = optuna.load_study(study_name="faults", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].params == study.trials[0].params != study.trials[2].params
    parent = [r for r in _runs(tmp_path) if r.data.tags.get("epochgraph.role") == "sweep"]
    assert [(r.info.run_name, r.info.status) for r in parent] == [("faults", "FINISHED")]


def test_rerun_of_a_finished_sweep_changes_no_run(tmp_path):
    first = _sweep(tmp_path, "hydra.sweeper.n_trials=1")
    assert first.returncode == 0, first.stderr[-2000:]
    before = {r.info.run_id: (r.info.status, r.info.end_time, r.data.metrics, r.data.tags) for r in _runs(tmp_path)}
    again = _sweep(tmp_path, "hydra.sweeper.n_trials=1")
    assert again.returncode == 0, again.stderr[-2000:]
    after = {r.info.run_id: (r.info.status, r.info.end_time, r.data.metrics, r.data.tags) for r in _runs(tmp_path)}
    assert after == before  # same runs, same end times, nothing logged
    assert "Sweep faults: 1 complete, 0 pruned, 0 failed" in again.stdout
    assert "nothing to train" in again.stderr + again.stdout
