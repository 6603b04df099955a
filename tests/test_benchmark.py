"""The benchmark's bookkeeping: settings, resuming by seed, and how targets are read from results."""

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from epochgraph.bench import benchmark, populations, pruning, summary
from epochgraph.errors import EpochgraphError
from epochgraph.store import tracking

BENCH_CONF = str(Path(__file__).resolve().parents[1] / "conf" / "bench")


def _cfg(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=BENCH_CONF, version_base="1.3"):
        cfg = compose(config_name="bench", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def test_quick_mode_has_its_own_store_results_and_populations():
    full = benchmark.settings(_cfg())
    quick = benchmark.settings(_cfg("bench.quick=true"))
    assert sum(full["populations"].values()) >= 120 and "graph_stage" in full["steps"]
    assert quick["tracking_uri"] != full["tracking_uri"] and quick["results"] != full["results"]
    assert quick["tables"] != full["tables"] and "graph_stage" not in quick["steps"]
    assert set(quick["populations"]) <= set(full["populations"]) and max(quick["populations"].values()) <= 10
    assert "trainer.epochs=3" in quick["train_overrides"]
    # quick replay settings merge into the signature base instead of replacing the variant list
    assert quick["replay"]["signature"]["classifiers"] == full["replay"]["signature"]["classifiers"]
    assert quick["replay"]["signature"]["base"]["n_startup_trials"] == 3


@pytest.mark.parametrize("override, message", [
    ("bench.steps=[population,plot]", "unknown bench step 'plot'"),
    ("+bench.populations.population_vgg=5", "'population_vgg', which is not a preset"),
    ("bench.populations.population_lenet=0", "bench.populations.population_lenet=0 must be >= 1"),
    ("bench.workers=0", "bench.workers=0 must be >= 1"),
])
def test_bad_settings_are_one_line_errors(override, message):
    with pytest.raises(EpochgraphError, match=message.replace("[", r"\[")):
        benchmark.settings(_cfg(override))


def test_resume_skips_only_finished_unpruned_seeds(tracking_uri):
    client = tracking.get_client(tracking_uri)
    exp = tracking.experiment_id(client, "pop")
    for seed, status, tags in ((0, "FINISHED", {}), (1, "FAILED", {}), (2, "FINISHED", {"pruned": "true"}),
                               (3, "KILLED", {}), (4, "FINISHED", {})):
        run = client.create_run(exp, tags=tags)
        client.log_param(run.info.run_id, "seed", seed)
        client.set_terminated(run.info.run_id, status)
    assert populations.recorded_seeds(MlflowClient(tracking_uri), "pop") == {0, 4}
    assert populations.recorded_seeds(client, "absent") == set()
    b = benchmark.settings(_cfg())
    cmd = populations.train_command("population_lenet", [1, 2, 3], {**b, "tracking_uri": tracking_uri})
    assert "seed=1,2,3" in cmd and "+experiment=population_lenet" in cmd and "hydra/launcher=local_workers" in cmd
    assert f"mlflow.tracking_uri={tracking_uri}" in cmd


def _res(**pruners):
    return {"pruners": {name: {"epochs_frac": (frac, 0.0), "regret": (regret, 0.0), "zero_regret_share": zero,
                               "false_prune": (fp, 0.0), "high_pruned": (fp, 0.0)}
                        for name, (frac, regret, zero, fp) in pruners.items()}}


def test_pruning_targets_compare_at_no_more_regret():
    res = _res(**{"signature-mlp-both": (0.4, 0.0, 1.0, 0.2), "signature-svm-both": (0.3, 0.01, 0.5, 0.2),
                  "signature-svm-degree": (0.9, 0.0, 1.0, 0.01), "hybrid-mlp": (0.2, 0.0, 1.0, 0.3),
                  "median": (0.25, 0.02, 0.3, 0.5), "hyperband": (0.7, 0.0, 1.0, 0.1), "none": (1.0, 0.0, 1.0, 0.0)})
    p = pruning.pruning_targets(res)
    # svm saves more but not at zero regret; median saves more but with regret: neither is the comparison;
    # the hybrid is a kind of its own
    assert p["signature"] == "signature-mlp-both" and p["signature_saving"] == pytest.approx(0.6)
    assert p["optuna"] == "hyperband" and p["optuna_saving"] == pytest.approx(0.3)
    assert p["ratio"] == pytest.approx(2.0) and p["optuna_most_saving"] == "median"
    assert p["fewest_false_prunes"] == "signature-svm-degree" and p["fewest_false_prunes_saving"] == pytest.approx(0.1)
    h = pruning.pruning_targets(res, "hybrid")
    assert h["signature"] == "hybrid-mlp" and h["ratio"] == pytest.approx(0.8 / 0.3)


def test_pruning_targets_without_a_zero_regret_signature_take_the_lowest_regret():
    res = _res(**{"signature-a": (0.5, 0.01, 0.5, 0.1), "signature-b": (0.3, 0.03, 0.2, 0.1),
                  "median": (0.4, 0.01, 0.5, 0.3), "none": (1.0, 0.0, 1.0, 0.0)})
    p = pruning.pruning_targets(res)
    assert p["signature"] == "signature-a" and p["optuna"] == "median"
    assert p["ratio"] == pytest.approx(0.5 / 0.6)


def test_forecast_targets_pick_the_best_cell_per_family():
    df = pd.DataFrame([
        {"classifier": "svm", "features": "signature-degree-plain", "t": 1, "bal_acc_mean": 0.7},
        {"classifier": "mlp", "features": "signature-both-wavg", "t": 1, "bal_acc_mean": 0.8},
        {"classifier": "mlp", "features": "curve", "t": 1, "bal_acc_mean": 0.9},
        {"classifier": "svm", "features": "hybrid-both-plain", "t": 1, "bal_acc_mean": 0.95},
        {"classifier": "svm", "features": "b_wl", "t": 1, "bal_acc_mean": 0.99},
        {"classifier": "svm", "features": "unrolled", "t": 2, "bal_acc_mean": None, "note": "over budget"},
    ])
    rows = summary.forecast_targets(df)
    assert len(rows) == 1
    r = rows[0]
    assert (r["signature"], r["signature_cell"]) == (0.8, "mlp signature-both-wavg")
    assert (r["curve"], r["hybrid"]) == (0.9, 0.95)
