import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow.tracking import MlflowClient

from epochgraph.cli.graph_stage import main as recompute_main
from epochgraph.cli.graph_stage import recompute_signatures
from epochgraph.graph.signature import AGGREGATORS
from epochgraph.training.job import run_job
from tests.conftest import TINY, compose_train


def test_signatures_logged_every_epoch_and_recomputed_from_artifacts(tracking_uri, capsys):
    job = run_job(compose_train([*TINY, "trainer.epochs=3"], tracking_uri))
    client = MlflowClient(tracking_uri)
    run = client.get_run(job.run_id)
    sig_keys = [k for k in run.data.metrics if k.startswith("sig/") and k != "sig/nonfinite"]
    assert len(sig_keys) == 10
    for c in ("degree", "eigenvector"):
        for a in AGGREGATORS:
            assert [m.step for m in client.get_metric_history(job.run_id, f"sig/{c}/{a}")] == [1, 2, 3]
    assert len(client.get_metric_history(job.run_id, "time/graph_s")) == 3
    logged = {m.step: m.value for m in client.get_metric_history(job.run_id, "sig/eigenvector/kurtosis")}
    assert logged[3] == job.result.history[2]["sig/eigenvector/kurtosis"]
    # the engine is recorded, and every kept epoch has its picture, the run its distributions plot
    assert run.data.tags["graph_engine"] == "graph_tool"
    pictures = {f.path for f in client.list_artifacts(job.run_id, "graph")}
    assert pictures == {"graph/epoch_001.png", "graph/epoch_002.png", "graph/epoch_003.png",
                        "graph/centrality_distributions.png"}
    png = Path(urlparse(run.info.artifact_uri).path) / "graph" / "epoch_001.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # corrupt one artifact: it is named and skipped, the other epochs are recomputed identically
    art = Path(urlparse(run.info.artifact_uri).path) / "weights" / "epoch_002.safetensors"
    art.write_bytes(b"not a safetensors file")
    assert recompute_signatures(job.run_id, tracking_uri) == 2
    err = capsys.readouterr().err
    assert "weights/epoch_002.safetensors is unreadable" in err
    history = client.get_metric_history(job.run_id, "sig/eigenvector/kurtosis")
    assert sorted(m.step for m in history) == [1, 2, 3]  # the values already there are kept, not doubled
    for m in history:
        assert abs(m.value - logged[m.step]) < 1e-9


def test_recompute_unknown_run_is_one_line(tracking_uri, capsys):
    try:
        recompute_main(["0123456789abcdef", "--tracking-uri", tracking_uri])
    except SystemExit as exit_:
        assert exit_.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("epochgraph: error: no MLflow run '0123456789abcdef'")


def test_recompute_rejects_bad_arguments_and_never_doubles_a_point(tracking_uri, tmp_path, capsys):
    job = run_job(compose_train([*TINY, "graph.enabled=false"], tracking_uri))
    client = MlflowClient(tracking_uri)
    for flag, value in (("--backend", "bar"), ("--centralities", "degree,pagerank")):
        with pytest.raises(SystemExit) as exit_:
            recompute_main([job.run_id, "--tracking-uri", tracking_uri, flag, value])
        assert exit_.value.code != 0
        captured = capsys.readouterr()
        assert flag in captured.err and repr(value.split(",")[-1]) in captured.err.replace('"', "'")
        assert "graph.centralities" not in captured.err and "recomputed" not in captured.out
    assert not client.get_metric_history(job.run_id, "sig/degree/mean")

    # a run trained without the graph stage is completed; a second recompute adds no point
    for _ in range(2):
        recompute_main([job.run_id, "--tracking-uri", tracking_uri, "--centralities", "degree",
                        "--pictures-dir", str(tmp_path / "pictures")])
        assert "2 snapshots recomputed" in capsys.readouterr().out
        for a in AGGREGATORS:
            assert sorted(m.step for m in client.get_metric_history(job.run_id, f"sig/degree/{a}")) == [1, 2]
    assert not client.get_metric_history(job.run_id, "sig/eigenvector/mean")
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == [
        "centrality_distributions.png", "epoch_001.png", "epoch_002.png"]
    assert {f.path for f in client.list_artifacts(job.run_id, "graph")} >= {"graph/epoch_002.png"}
    # asking for one more centrality logs only that one's values
    recompute_signatures(job.run_id, tracking_uri, ["degree", "eigenvector"], pictures=False)
    assert sorted(m.step for m in client.get_metric_history(job.run_id, "sig/eigenvector/mean")) == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(job.run_id, "sig/degree/mean")) == [1, 2]


def test_pictures_follow_the_kept_weights(tracking_uri):
    job = run_job(compose_train([*TINY, "trainer.epochs=3", "mlflow.keep_weights=[1]",
                                 "graph.centralities=[degree]"], tracking_uri))
    client = MlflowClient(tracking_uri)
    weights = {f.path for f in client.list_artifacts(job.run_id, "weights")}
    assert weights == {"weights/epoch_001.safetensors", "weights/epoch_003.safetensors"}
    # epoch 2's weights are not kept, so neither is its picture; with degree alone it colours the nodes
    assert {f.path for f in client.list_artifacts(job.run_id, "graph")} == {
        "graph/epoch_001.png", "graph/epoch_003.png", "graph/centrality_distributions.png"}
    assert len(client.get_metric_history(job.run_id, "time/graph_pictures_s")) == 3


SETUP_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"


def _setup_import_check() -> str:
    """The Python code of the import check that ends scripts/setup.sh (run by every make target)."""
    found = re.search(r'\.venv/bin/python -c "([^"]+)" \\\n\s*\|\|', SETUP_SCRIPT.read_text())
    assert found, "scripts/setup.sh ends with an import check: .venv/bin/python -c \"...\" || ..."
    return found.group(1)


@pytest.mark.slow  # the setup check and a graph-stage run as real processes
def test_no_gtk_warning_in_the_setup_check_nor_a_graph_stage_run(tmp_path):
    # -W always: the one warning dropped is dropped by epochgraph, not by a default filter
    check = subprocess.run([sys.executable, "-W", "always", "-c", _setup_import_check()], capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 0, check.stderr
    assert "graph_tool_cairo_draw()" in _setup_import_check()
    assert "Gtk" not in check.stdout + check.stderr
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    train = subprocess.run([sys.executable, "-W", "always", "-m", "epochgraph.cli.train", *TINY, "trainer.epochs=1",
                            f"mlflow.tracking_uri={uri}"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "Gtk" not in train.stdout + train.stderr
    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("epochgraph").experiment_id])
    assert {f.path for f in MlflowClient(uri).list_artifacts(run.info.run_id, "graph")} == {
        "graph/epoch_001.png", "graph/centrality_distributions.png"}


def test_a_missing_cairo_still_warns():
    # only the GTK warning is dropped: graph-tool's own warning about a missing cairo still shows
    code = ("import sys; sys.modules['cairo'] = None\n"
            "from epochgraph.graph.graph_drawing import graph_tool_cairo_draw\n"
            "try:\n    graph_tool_cairo_draw()\nexcept ImportError:\n    print('no cairo')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "no cairo"
    assert "RuntimeWarning: Error importing cairo. Graph drawing will not work." in proc.stderr
