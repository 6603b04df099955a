"""The ways into the results: optuna-dashboard on the study storage, links to the MLflow UI's runs tables."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import optuna
import pytest
from mlflow.tracking import MlflowClient

from epochgraph.cli.browse import experiment_links
from tests.conftest import free_port

BROWSE = [sys.executable, "-m", "epochgraph.cli.browse"]



def _get(url: str, deadline: float):
    """GET a JSON answer, retrying while the server starts."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                return json.load(resp)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def _study(url: str) -> None:
    """Three trials as a pruned sweep leaves them: two complete, one pruned after 2 epochs."""
    study = optuna.create_study(study_name="pruned_sweep", storage=url, direction="maximize")
    for lr, curve, state in ((0.01, [0.5, 0.7, 0.8], "COMPLETE"), (0.3, [0.2, 0.25], "PRUNED"),
                             (0.05, [0.6, 0.75, 0.85], "COMPLETE")):
        study.enqueue_trial({"optim.lr": lr})
        trial = study.ask({"optim.lr": optuna.distributions.FloatDistribution(0.001, 1.0, log=True)})
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
        if state == "PRUNED":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, curve[-1])


@pytest.mark.slow  # a real process (the command, workers or a server): make test runs it
def test_dashboard_serves_the_study_storage_on_localhost(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    _study(url)
    port = free_port()
    # the storage comes from EPOCHGRAPH_STORAGE_URL when set, as for storage=postgres sweeps
    proc = subprocess.Popen([*BROWSE, "dashboard", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**{k: v for k, v in os.environ.items() if k != "EPOCHGRAPH_UI_URL"},
                                 "EPOCHGRAPH_STORAGE_URL": url})
    try:
        base = f"http://127.0.0.1:{port}"
        studies = _get(f"{base}/api/studies", time.time() + 120)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["pruned_sweep"]
        detail = _get(f"{base}/api/studies/{studies[0]['study_id']}", time.time() + 120)
        assert [t["state"] for t in detail["trials"]] == ["Complete", "Pruned", "Complete"]
        assert [v["value"] for v in detail["trials"][1]["intermediate_values"]] == [0.2, 0.25]
        assert [t["number"] for t in detail["best_trials"]] == [2]
        importances = _get(f"{base}/api/studies/{studies[0]['study_id']}/param_importances", time.time() + 120)
        assert [p["name"] for p in importances["param_importances"][0]] == ["optim.lr"]
        # a trial note's MLflow link (/mlflow/...) goes to the MLflow UI on the host the dashboard was reached at
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/mlflow/experiments/3/runs/abc")
        answer = conn.getresponse()
        assert answer.status == 302 and answer.getheader("Location") == (
            "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning")
        conn.close()
        # a client that stalls half-way through its request holds one of the server's threads
        stalled = socket.create_connection(("127.0.0.1", port), timeout=30)
        stalled.sendall(b"GET /api/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    stalled.close()
    assert f"optuna-dashboard on http://127.0.0.1:{port}/dashboard (storage: {url})" in out
    # one line says why it ended, no traceback; the server's access log of the last request may land after it
    said = [line for line in err.strip().splitlines() if not line.startswith("127.0.0.1 - - [")]
    assert proc.returncode == 143 and said[-1] == "epochgraph: terminated (SIGTERM)" and "Traceback" not in err


@pytest.mark.slow  # a real process (the command, workers or a server): make test runs it
def test_dashboard_without_a_study_storage_says_how_to_get_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "EPOCHGRAPH_STORAGE_URL"}
    proc = subprocess.run([*BROWSE, "dashboard"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"epochgraph: error: no study storage at {tmp_path / 'mlruns' / 'optuna.db'} yet; "
                                   "run a sweep first (make run), or point EPOCHGRAPH_STORAGE_URL at the shared one")
    assert not (tmp_path / "mlruns" / "optuna.db").exists()


def test_links_open_each_experiments_runs_table(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("pruned_sweep")
    assert experiment_links(uri, "http://127.0.0.1:5001") == [
        f"  pruned_sweep: http://127.0.0.1:5001/#/experiments/{exp}/runs?workflowType=machine_learning"]


def test_links_name_each_sweeps_run_after_its_runs_table(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("pruned_sweep")
    other = client.create_experiment("epochgraph")
    # two sweeps in one experiment (as the sweeper tags its parent runs), a trial of one, a single training
    first = client.create_run(exp, run_name="pruned_sweep", tags={"epochgraph.role": "sweep", "study": "pruned_sweep"},
                              start_time=1000).info.run_id
    client.create_run(exp, run_name="✓ trial-000", tags={"mlflow.parentRunId": first, "study": "pruned_sweep"},
                      start_time=2000)
    second = client.create_run(exp, run_name="killed · median", tags={"epochgraph.role": "sweep", "study": "median"},
                               start_time=3000).info.run_id
    client.create_run(other, run_name="lenet", start_time=4000)
    from epochgraph.cli.browse import main

    main(["links", "--ui", "http://127.0.0.1:5001", "--tracking-uri", uri])
    ui, q = "http://127.0.0.1:5001/#/experiments", "?workflowType=machine_learning"
    assert capsys.readouterr().out.splitlines() == [
        "Runs of each experiment (these links open the runs table, not the GenAI overview), and each sweep's run "
        "(its trials):",
        f"  epochgraph: {ui}/{other}/runs{q}",
        f"  pruned_sweep: {ui}/{exp}/runs{q}",
        f"    Sweep run: {ui}/{exp}/runs/{first}{q} (study pruned_sweep)",
        f"    Sweep run: {ui}/{exp}/runs/{second}{q} (study median)"]


def test_the_notes_mlflow_links_go_to_the_ui_the_dashboard_is_told_of(monkeypatch):
    from epochgraph.cli.browse import forward_mlflow_links

    monkeypatch.delenv("EPOCHGRAPH_UI_URL", raising=False)
    answers = []
    app = forward_mlflow_links(lambda environ, start: [b"dashboard"], "http://gpu-box:5001/")
    body = app({"PATH_INFO": "/mlflow/experiments/2/runs/r1", "HTTP_HOST": "laptop:8080"},
               lambda status, headers: answers.append((status, dict(headers))))
    assert answers == [("302 Found", {"Location": "http://gpu-box:5001/#/experiments/2/runs/r1?workflowType="
                                                  "machine_learning", "Content-Type": "text/plain; charset=utf-8"})]
    assert b"gpu-box:5001" in b"".join(body)
    # any other path is the dashboard's
    assert app({"PATH_INFO": "/dashboard", "HTTP_HOST": "laptop:8080"}, None) == [b"dashboard"]
    # told nothing: the UI's port on the host the browser reached the dashboard at
    told = forward_mlflow_links(lambda environ, start: [], None)
    told({"PATH_INFO": "/mlflow/experiments/2/runs/r1", "HTTP_HOST": "laptop:8080"},
         lambda status, headers: answers.append(dict(headers)["Location"]))
    assert answers[-1].startswith("http://laptop:5000/#/experiments/2/runs/r1")
