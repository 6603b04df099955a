"""A tiny comparison on a temporary MLflow store with a handful of real 2-epoch runs."""

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from epochgraph.compare import run_compare
from epochgraph.errors import EpochgraphError
from epochgraph.job import run_job
from tests.conftest import compose_train

COMPARE_CONF = str(Path(__file__).resolve().parents[1] / "conf" / "compare")
LRS = [0.0005, 0.001, 0.0008, 0.1, 0.08, 0.12]


def _compare_cfg(tracking_uri, out, *overrides):
    with initialize_config_dir(config_dir=COMPARE_CONF, version_base="1.3"):
        cfg = compose(config_name="compare", overrides=[
            "experiment=tiny_pop", f"mlflow.tracking_uri={tracking_uri}", f"output_dir={out}", "epochs=2",
            "folds=2", "label.quantile=null", "label.threshold=0.3", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture
def population(tracking_uri):
    for i, lr in enumerate(LRS):
        run_job(compose_train(["data.train_size=600", "data.val_size=200", "data.test_size=100", "trainer.epochs=2",
                               "trainer.batch_size=32", "trainer.threads=1", f"optim.lr={lr}", f"seed={i}",
                               "mlflow.experiment=tiny_pop"], tracking_uri))
    return tracking_uri


def test_tiny_compare_writes_tables_plots_and_registers(population, tmp_path):
    out = tmp_path / "cmp"
    cfg = _compare_cfg(population, out, "classifiers=[svm,xgboost]", "register=true", "select.t=2",
                       "registry.name=tiny-sig")
    df = run_compare(cfg)
    # 2 classifiers x (3 centrality sets x 3 variants + 6 baselines) x 2 epochs
    assert len(df) == 2 * 15 * 2
    assert set(df["t"]) == {1, 2} and set(df["n_runs"]) == {6}
    scored = df.dropna(subset=["bal_acc_mean"])
    assert ((scored["bal_acc_mean"] >= 0) & (scored["bal_acc_mean"] <= 1)).all()
    # the learning curve separates runs that learn from runs that do not
    curve = df[(df["features"] == "curve") & (df["t"] == 2)]
    assert curve["bal_acc_mean"].max() > 0.7
    for f in ("comparison.csv", "comparison.md", "balanced_accuracy_vs_t.png"):
        assert (out / f).stat().st_size > 0
    client = MlflowClient(population)
    comp = client.search_runs([client.get_experiment_by_name("compare").experiment_id])[0]
    assert {a.path for a in client.list_artifacts(comp.info.run_id)} >= {"comparison.csv", "comparison.md",
                                                                           "balanced_accuracy_vs_t.png"}
    assert comp.data.tags["registered_model"] == "models:/tiny-sig@champion"
    from epochgraph.predictor import load_predictor

    assert load_predictor("models:/tiny-sig@champion").spec.t == 2
    md = (out / "comparison.md").read_text()
    assert "Which signal wins at each t" in md and "signature-both-plain" in md


def test_transfer_split_and_clear_errors(population, tmp_path):
    cfg = _compare_cfg(population, tmp_path / "q2", "classifiers=[svm]", "baselines=[curve]",
                       "train_on={seed: 0}", "test_on={optim.name: sgd}")
    with pytest.raises(EpochgraphError, match="leaves no run labelled high"):
        run_compare(cfg)  # seed 0 alone is one low run
    cfg = _compare_cfg(population, tmp_path / "q2", "classifiers=[svm]", "baselines=[curve]",
                       "train_on={optim.name: sgd}", "test_on={optim.name: sgd}")
    df = run_compare(cfg)
    assert (df["bal_acc_std"] == 0).all() and not math.isnan(df["bal_acc_mean"].iloc[0])
    with pytest.raises(EpochgraphError, match="unknown MLflow experiment 'nope'; existing: .*tiny_pop"):
        run_compare({**cfg, "experiment": "nope"})
    with pytest.raises(EpochgraphError, match="label.threshold=0.99 leaves no run labelled high among 6 runs"):
        run_compare({**cfg, "label": {"threshold": 0.99, "quantile": None, "metric": "final_val_acc"}})
