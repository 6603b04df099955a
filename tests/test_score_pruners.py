"""``epochgraph-replay`` and ``epochgraph-export``: pruners scored on recorded curves, a sweep exported as a table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from epochgraph.errors import EpochgraphError
from epochgraph.search.score_pruners import score_tables, setting_factory
from tests import inprocess
from tests.conftest import TINY, compose_train
from tests.curves import TABLES

CFG = {"tables": [str(TABLES)], "populations": ["population_lenet"], "trials": 6, "draws": 2, "seed": 0,
       "settings": ["default", "prune_forever", "median", "successive_halving"], "variants": {},
       "warm_start": [str(TABLES)], "workers": 1}


def test_default_is_the_pruner_make_run_uses_warm_started_without_the_population_scored():
    factory = setting_factory("default", 10, "population_lenet", CFG)
    made = compose_train(["+experiment=pruned_sweep", "trainer.epochs=10"]).pruner
    expected = {**OmegaConf.to_container(made, resolve=True), "warm_start": [str(TABLES)],
                "warm_exclude": ["population_lenet"]}
    assert factory.config == expected
    assert expected["pause"] is True and expected["min_progress"] == 0.11  # make run pauses
    forever = setting_factory("prune_forever", 10, "x", CFG).config
    assert expected["calibrate"] is False  # a pause is guarded by the resume rule, not the calibration margin
    # pruner=forecast
    assert forever == {**expected, "pause": False, "min_progress": 0.0, "calibrate": True, "warm_exclude": ["x"]}
    # a preset built on another (defaults list), as Hydra composes it
    pausing = setting_factory("forecast_pause", 10, "x", CFG).config
    assert pausing == {**expected, "warm_exclude": ["x"]}
    assert setting_factory("median", 10, "x", CFG).config["_target_"] == "optuna.pruners.MedianPruner"
    # the benchmark's draws step scores the same pruner, first, beside its own settings
    from epochgraph.bench import draws

    made = draws.settings({"tables": str(TABLES), "draws": {"optuna": {"median": {}}}}, 10, "population_lenet")
    assert list(made) == ["default", "median"] and made["default"].config == expected
    assert list(draws.settings({"tables": str(TABLES), "draws": {"default": False}}, 10, "population_lenet")) == []
    eager = setting_factory("eager", 10, "x", {**CFG, "variants": {"eager": {"pruner": "forecast", "delta": 0.2}}})
    assert eager.config["delta"] == 0.2 and eager.config["warm_exclude"] == ["x"]


@pytest.mark.slow
def test_scores_every_setting_on_every_population_and_writes_json_markdown_and_a_plot(tmp_path):
    out = score_tables({**CFG, "output_dir": str(tmp_path)})
    saved = json.loads((tmp_path / "replay.json").read_text())
    assert saved == out and list(saved) == ["population_lenet"]
    table = saved["population_lenet"]
    assert list(table) == CFG["settings"]
    for r in table.values():
        assert 0 < r["epochs_frac"] <= 1 and r["regret_pp"] >= 0 and r["kept"] in (0.0, 0.5, 1.0)
        assert r["best_done_frac"] is None or 0 < r["best_done_frac"] <= 1
        assert (r["kept"] == 1.0) == (r["regret_pp"] == 0)
    assert table["median"]["epochs_frac"] < 1  # Optuna's Median prunes some of these LeNet trainings
    md = (tmp_path / "replay.md").read_text()
    assert md.count("| population_lenet |") == 4 and (tmp_path / "replay.png").stat().st_size > 10_000


@pytest.mark.parametrize("change, message", [
    ({"settings": ["nope"]}, "unknown setting 'nope'; valid choices: default, .*median"),
    ({"tables": []}, "tables=\\[\\] names no population table"),
    ({"trials": 0}, "trials=0 must be >= 1"),
    ({"populations": ["nowhere"]}, "experiment 'nowhere' is not in the population table"),
])
def test_bad_input_is_one_line_naming_the_value(change, message, tmp_path):
    with pytest.raises(EpochgraphError, match=message):
        score_tables({**CFG, "output_dir": str(tmp_path), **change})


@pytest.mark.slow
def test_a_sweep_exported_as_a_table_is_scored_by_the_command(tmp_path, tracking_uri):
    from epochgraph.forecast.population import export_experiment, read_table
    from epochgraph.store import tracking
    from epochgraph.training.job import run_job

    for lr in (0.05, 0.1, 0.2):
        run_job(compose_train([*TINY, "trainer.epochs=3", f"optim.lr={lr}", "graph.enabled=false",
                               "mlflow.experiment=mine"], tracking_uri))
    pruned = run_job(compose_train([*TINY, "graph.enabled=false", "mlflow.experiment=mine"], tracking_uri))
    tracking.set_tags(tracking.get_client(tracking_uri), pruned.run_id, {"pruned": "true"})  # as a pruned trial's
    path = export_experiment(tracking_uri, "mine", tmp_path / "mine.parquet")
    df = read_table(path)
    assert df["run_id"].nunique() == 3 and set(df["experiment"]) == {"mine"}  # the pruned trial left out
    assert sorted(df.groupby("run_id")["epoch"].max()) == [3, 3, 3] and set(df["trainer.epochs"]) == {3}
    # the commands, as a user runs them (without a new interpreter): a table in, replay.json out
    here = tmp_path / "here"  # the folder the user runs the commands in
    here.mkdir()
    proc = inprocess.run("epochgraph.cli.replay", [f"tables=[{path}]", "trials=3", "draws=1",
                                                   "settings=[median,patient]", f"output_dir={tmp_path / 'out'}"],
                         cwd=here)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(Path(tmp_path / "out" / "replay.json").read_text())
    assert set(res["mine"]) == {"median", "patient"} and res["mine"]["patient"]["epochs_frac"] == 1.0
    bad = inprocess.run("epochgraph.cli.export", ["experiment=nope", f"output={tmp_path / 'x.parquet'}",
                                                  f"tracking_uri={tracking_uri}"], cwd=here)
    assert bad.returncode == 2 and "unknown MLflow experiment 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.parquet").exists()
    assert list(here.iterdir()) == []  # no replay.log or export.log left where they ran
