"""A tiny comparison on a temporary MLflow store with a handful of real 2-epoch runs."""

import math
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from epochgraph.errors import EpochgraphError
from epochgraph.forecast.compare import run_compare
from epochgraph.training.job import run_job
from tests.conftest import compose_train

COMPARE_CONF = str(Path(__file__).resolve().parents[1] / "conf" / "compare")
LRS = [0.0005, 0.001, 0.0008, 0.1, 0.08, 0.12]  # seeds 0-2 barely learn in 2 epochs, 3-5 do


def _compare_cfg(tracking_uri, out, *overrides):
    with initialize_config_dir(config_dir=COMPARE_CONF, version_base="1.3"):
        cfg = compose(config_name="compare", overrides=[
            "experiment=tiny_pop", f"mlflow.tracking_uri={tracking_uri}", f"output_dir={out}", "epochs=2",
            "folds=2", "label.quantile=null", "label.threshold=0.3", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    """Six recorded 2-epoch LeNet runs, shared by the tests of this module (they only read them)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('pop') / 'mlruns' / 'mlflow.db'}"
    for i, lr in enumerate(LRS):
        run_job(compose_train(["data.train_size=600", "data.val_size=200", "data.test_size=100", "trainer.epochs=2",
                               "trainer.batch_size=32", "trainer.threads=1", f"optim.lr={lr}", f"seed={i}",
                               "mlflow.experiment=tiny_pop"], uri))
    return uri


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
    from epochgraph.forecast.predictor import load_predictor
    from epochgraph.forecast.records import load_runs

    loaded = load_predictor("models:/tiny-sig@champion")
    assert loaded.spec.t == 2 and loaded.classifier == "svm"
    runs = load_runs(client, "tiny_pop", 2)
    # the registered model is the one fitted on all runs: refitting the same spec gives the same forecasts
    from epochgraph.forecast.predictor import SignaturePredictor

    refit = SignaturePredictor(loaded.spec, loaded.rule, "svm", loaded.params, loaded.seed)
    refit.fit([r.history for r in runs], [r.final_acc for r in runs])
    histories = [r.history for r in runs]
    assert (loaded.predict_proba_high(histories) == refit.predict_proba_high(histories)).all()
    md = (out / "comparison.md").read_text()
    assert "Which signal wins at each t" in md and "signature-both-plain" in md


def test_transfer_split_scores_only_unseen_runs(population, tmp_path):
    base = ("classifiers=[xgboost]", "baselines=[curve]", "centralities=[degree]", "variants=[plain]")
    cfg = _compare_cfg(population, tmp_path / "q2", *base, "experiment=[tiny_pop]", "train_on={seed: [0, 1, 3, 4]}",
                       "test_on={seed: [2, 5]}")
    df = run_compare(cfg)
    assert set(df["n_runs"]) == {6} and (df["bal_acc_std"] == 0).all()
    assert not math.isnan(df[df["features"] == "curve"]["bal_acc_mean"].iloc[-1])
    # an unset test_on is every run not fitted on; the same filter on both sides leaves nothing to score
    cfg = _compare_cfg(population, tmp_path / "q2", *base, "train_on={optim.name: sgd}", "test_on={optim.name: sgd}")
    with pytest.raises(EpochgraphError, match=r"matches 6 runs and test_on=.* 0 others"):
        run_compare(cfg)
    cfg = _compare_cfg(population, tmp_path / "q2", *base, "train_on={seed: [0, 1]}")
    with pytest.raises(EpochgraphError, match="label.threshold=0.3 leaves no run labelled high among 2 runs"):
        run_compare(cfg)  # seeds 0 and 1 are both low


def test_clear_one_line_errors(population, tmp_path):
    cfg = _compare_cfg(population, tmp_path / "e", "classifiers=[svm]", "baselines=[curve]")
    with pytest.raises(EpochgraphError, match="unknown MLflow experiment 'nope'; existing: .*tiny_pop"):
        run_compare({**cfg, "experiment": "nope"})
    with pytest.raises(EpochgraphError, match="unknown MLflow experiment 'nope'"):
        run_compare({**cfg, "experiment": ["tiny_pop", "nope"]})
    with pytest.raises(EpochgraphError, match="label.threshold=0.99 leaves no run labelled high among 6 runs"):
        run_compare({**cfg, "label": {"threshold": 0.99, "quantile": None, "metric": "final_val_acc"}})
    for override, message in (("epochs=0", "epochs=0 must be >= 1"),
                               ("classifiers=[svm,rf]", "unknown classifier 'rf'; valid choices: mlp, svm, xgboost"),
                               ("baselines=[weights]", "unknown baseline 'weights'"),
                               ("variants=[mean]", "unknown signature variant 'mean'")):
        with pytest.raises(EpochgraphError, match=message):
            run_compare(_compare_cfg(population, tmp_path / "e", override))
    MlflowClient(population).create_experiment("empty_pop")
    with pytest.raises(EpochgraphError, match="experiment 'empty_pop' has no finished training runs"):
        run_compare({**cfg, "experiment": "empty_pop"})


def test_cli_reports_one_line_and_exits_non_zero(population, tmp_path, monkeypatch, capsys):
    from epochgraph.cli import compare as cli

    monkeypatch.setattr(sys, "argv", ["epochgraph-compare", "experiment=nope", f"mlflow.tracking_uri={population}",
                                      f"output_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'hydra'}"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("epochgraph: error: unknown MLflow experiment 'nope'")


def test_corrupt_weights_artifact_is_named_and_that_run_skipped(population, tmp_path, capsys):
    client = MlflowClient(population)
    run = client.search_runs([client.get_experiment_by_name("tiny_pop").experiment_id], "params.seed = '4'")[0]
    weights = Path(urlparse(run.info.artifact_uri).path) / "weights" / "epoch_001.safetensors"
    backup = tmp_path / "backup.safetensors"
    shutil.copy(weights, backup)
    try:
        weights.write_bytes(b"not a safetensors file")
        cfg = _compare_cfg(population, tmp_path / "w", "classifiers=[xgboost]", "baselines=[b_wprime]",
                           "centralities=[degree]", "variants=[plain]")
        df = run_compare(cfg)
    finally:
        shutil.copy(backup, weights)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "skipped for the weight baselines" in ln]
    assert len(lines) == 1 and run.info.run_id in lines[0] and "weights/epoch_001.safetensors" in lines[0]
    assert set(df[df["features"] == "b_wprime"]["n_runs"]) == {5}
    assert set(df[df["features"] != "b_wprime"]["n_runs"]) == {6}


def test_weight_features_need_the_snapshot_of_epoch_t():
    from epochgraph.forecast.compare import _has_weight_features
    from epochgraph.forecast.predictor import FeatureSpec
    from epochgraph.forecast.records import RunRecord

    # weights kept for epochs 1 and 3 only (mlflow.keep_weights): B_* exist at t=1, 3; unrolled only at t=1
    rec = RunRecord("r", {}, {}, {"b_wl": [[1.0], None, [2.0]], "unrolled": [[0.0] * 5, None, [1.0] * 5]}, 0.5)
    assert [_has_weight_features(rec, FeatureSpec("b_wl", t=t)) for t in (1, 2, 3)] == [True, False, True]
    assert [_has_weight_features(rec, FeatureSpec("unrolled", t=t)) for t in (1, 2, 3)] == [True, False, False]
    assert not _has_weight_features(rec, FeatureSpec("b_wprime", t=1))


def test_a_population_table_gives_the_comparison_the_mlflow_runs_give(population, tmp_path):
    from epochgraph.forecast.population import EXTRA_METRICS, to_table, write_table
    from epochgraph.forecast.predictor import WEIGHT_SOURCES
    from epochgraph.forecast.records import load_runs

    runs = load_runs(MlflowClient(population), "tiny_pop", 10, weight_sources=WEIGHT_SOURCES,
                     extra_metrics=EXTRA_METRICS)
    table = write_table(to_table(runs, "tiny_pop"), tmp_path / "pop")
    base = ("classifiers=[svm,xgboost]", "folds=3")
    from_store = run_compare(_compare_cfg(population, tmp_path / "a", *base))
    from_table = run_compare(_compare_cfg(population, tmp_path / "b", *base, f"table={table}", "n_jobs=2"))
    cols = ["classifier", "features", "t", "n_runs", "bal_acc_mean", "auc_mean"]
    pd.testing.assert_frame_equal(from_store[cols], from_table[cols], atol=1e-9)
    with pytest.raises(EpochgraphError, match="'other' is not in the population table; it holds tiny_pop"):
        run_compare(_compare_cfg(population, tmp_path / "c", *base, f"table={table}", "experiment=other"))


def _record(i: int, final: float, epochs: int = 2):
    from epochgraph.forecast.records import RunRecord

    # a learning curve that ends where the run ends: stuck runs stay at chance
    curve = [0.1 + (final - 0.1) * (e + 1) / epochs for e in range(epochs)]
    history = {"val_acc": curve, "train_acc": curve, "val_loss": [2.3 - c for c in curve],
               "train_loss": [2.3 - c for c in curve]}
    return RunRecord(f"r{i}", {"seed": str(i)}, {}, history, final)


def test_ties_at_the_median_label_the_runs_above_it_high_and_the_header_says_so(tmp_path):
    from epochgraph.forecast.compare import compare, folds_text, label_text, population_cut

    # 7 of 12 runs stuck at chance: the median is 0.1 and ">= 0.1" would label every run high
    finals = [0.1] * 7 + [0.55, 0.6, 0.7, 0.75, 0.8]
    runs = [_record(i, f) for i, f in enumerate(finals)]
    cfg = {"label": {"threshold": None, "quantile": 0.5, "metric": "final_val_acc"}, "epochs": 2,
           "classifiers": ["svm"], "centralities": ["degree"], "variants": [], "baselines": ["curve"], "alpha": 0.5,
           "folds": 10, "seed": 0, "predictors": {"svm": {"params": {}}}}
    rule, cut = population_cut(runs, cfg)
    assert rule.labels(finals, cut).tolist() == [0] * 7 + [1] * 5
    assert label_text(runs, cfg, rule, cut) == (
        "high = final_val_acc > 0.1000 (7 runs tie at the label.quantile=0.5 cut 0.1000, so >= would label every "
        "run high)")
    df = compare(runs, cfg)
    # 10 folds asked, but the smaller class has 5 runs: 5 folds, and the header says so
    assert set(df["folds"]) == {5} and (df["bal_acc_mean"] == 1.0).all()
    assert folds_text(df, 10, 0) == ("stratified 5-fold cross-validation (folds=10 asked; the smaller class has "
                                     "fewer runs) (seed 0)")
    assert folds_text(df, 5, 0) == "stratified 5-fold cross-validation (seed 0)"
    # without ties the rule's own cut stays
    runs = [_record(i, f) for i, f in enumerate([0.1, 0.2, 0.6, 0.7])]
    rule, cut = population_cut(runs, cfg)
    assert label_text(runs, cfg, rule, cut) == "high = final_val_acc >= 0.4000"
    # every run tied: no cut separates them, the one-line error stays
    with pytest.raises(EpochgraphError, match="leaves no run labelled low among 4 runs"):
        population_cut([_record(i, 0.1) for i in range(4)], cfg)


def test_unseen_network_with_another_last_layer_size_is_a_cell_note_not_a_crash():
    from epochgraph.forecast.compare import evaluate
    from epochgraph.forecast.predictor import FeatureSpec, LabelRule
    from epochgraph.forecast.records import RunRecord

    def rec(i, model, width, final):
        return RunRecord(f"{model}{i}", {"model.name": model}, {"model": model},
                         {"val_acc": [final], "b_wl": [[final] * width]}, final)

    small = [rec(i, "lenet", 4, f) for i, f in enumerate([0.2, 0.3, 0.7, 0.8])]
    wide = [rec(i, "alexnet", 9, f) for i, f in enumerate([0.25, 0.75])]
    res = evaluate(FeatureSpec("b_wl", t=1), "svm", {}, small + wide, LabelRule(quantile=0.5), 2, 0,
                   train_on={"model": "lenet"}, test_on={"model": "alexnet"})
    assert res["note"] == "feature sizes differ between the networks (4, 9)" and "bal_acc_mean" not in res
    same = evaluate(FeatureSpec("b_wl", t=1), "svm", {}, small + [rec(9, "alexnet", 4, 0.9), rec(8, "alexnet", 4, 0.1)],
                    LabelRule(quantile=0.5), 2, 0, train_on={"model": "lenet"}, test_on={"model": "alexnet"})
    assert 0.0 <= same["bal_acc_mean"] <= 1.0


def test_the_command_writes_into_its_hydra_run_dir_not_the_repository(population, tmp_path, monkeypatch):
    from epochgraph.cli import compare as cli

    monkeypatch.chdir(tmp_path)  # a user's own folder: nothing may appear under bench/results there
    run_dir = tmp_path / "hydra-run"
    monkeypatch.setattr(sys, "argv", ["epochgraph-compare", "experiment=tiny_pop", f"mlflow.tracking_uri={population}",
                                      "epochs=1", "folds=2", "classifiers=[svm]", "baselines=[]", "variants=[plain]",
                                      "label.quantile=null", "label.threshold=0.3", f"hydra.run.dir={run_dir}"])
    cli.main()
    assert (run_dir / "comparison.csv").stat().st_size > 0 and (run_dir / "comparison.md").stat().st_size > 0
    assert not (tmp_path / "bench").exists()
    assert not (Path(__file__).resolve().parents[1] / "bench" / "results" / "compare" / "tiny_pop").exists()
