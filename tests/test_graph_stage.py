from pathlib import Path
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

from epochgraph.graph_stage import main as recompute_main
from epochgraph.graph_stage import recompute_signatures
from epochgraph.job import run_job
from epochgraph.signature import AGGREGATORS
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

    # corrupt one artifact: it is named and skipped, the other epochs are recomputed identically
    art = Path(urlparse(run.info.artifact_uri).path) / "weights" / "epoch_002.safetensors"
    art.write_bytes(b"not a safetensors file")
    assert recompute_signatures(job.run_id, tracking_uri) == 2
    err = capsys.readouterr().err
    assert "weights/epoch_002.safetensors is unreadable" in err
    history = client.get_metric_history(job.run_id, "sig/eigenvector/kurtosis")
    for m in history:
        assert abs(m.value - logged[m.step]) < 1e-9


def test_recompute_unknown_run_is_one_line(tracking_uri, capsys):
    try:
        recompute_main(["0123456789abcdef", "--tracking-uri", tracking_uri])
    except SystemExit as exit_:
        assert exit_.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("epochgraph: error: no MLflow run '0123456789abcdef'")
