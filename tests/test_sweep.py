"""A tiny pruned sweep through Hydra, the sweeper plugin and the basic launcher, end to end."""

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution

from hydra_plugins.epochgraph_sweeper.sweeper import search_space
from tests import inprocess
from tests.conftest import CONF_DIR, TINY


def _sweep(tmp_path, *overrides):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    args = ["+experiment=pruned_sweep", *TINY, f"storage.url={storage}", f"mlflow.tracking_uri={tracking}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}", "hydra.sweeper.study_name=tiny", *overrides]
    proc = inprocess.run("epochgraph.cli.train", args)  # the command, without a new interpreter
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, storage, tracking


@pytest.mark.slow
def test_pruned_trials_are_recorded_in_optuna_and_mlflow(tmp_path):
    proc, storage, tracking = _sweep(tmp_path, "hydra.sweeper.n_trials=3", "pruner=threshold",
                                     "pruner.lower=0.99", "pruner.n_warmup_steps=2",
                                     "trainer.epochs=3")
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.PRUNED] * 3
    assert study.metric_names == ["val_acc"]  # optuna-dashboard's name for the objective
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)  # pruned after epoch 2
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("pruned_sweep")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("epochgraph.role") == "sweep"]
    trials = [r for r in runs if "trial" in r.data.tags]
    assert len(parent) == 1 and len(trials) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent[0].info.run_id}
    for r in trials:
        assert r.info.status == "FINISHED"
        assert r.data.tags["pruned"] == "true" and r.data.tags["pruned_at_epoch"] == "2"
        assert r.data.tags["state"] == "PRUNED"
        # a pruned trial's last value is not a final one: its own name, not sorted among the finals
        assert "final_val_acc" not in r.data.metrics and "last_val_acc" in r.data.metrics
        assert study.trials[int(r.data.tags["trial"])].user_attrs["mlflow_run_id"] == r.info.run_id
    p = parent[0]
    assert p.info.status == "FINISHED"
    assert (p.data.tags["pruner"], p.data.tags["sampler"], p.data.tags["sweep"]) == ("threshold", "TPESampler", "tiny")
    assert {r.data.tags["sweep"] for r in trials} == {"tiny"}
    assert p.data.metrics["trials_pruned"] == 3 and p.data.metrics["epochs_trained"] == 6
    # shown to people to 4 significant digits (0.3333, not 0.33333333333333337)
    assert p.data.metrics["epochs_budget"] == 9 and p.data.metrics["epochs_saved_frac"] == 0.3333
    assert "sweep_curves.png" in [f.path for f in client.list_artifacts(p.info.run_id)]
    assert "3 pruned" in proc.stdout and "make ui" in proc.stdout
    # the outcome comes first in the run name, so the default runs table shows it
    assert sorted(r.info.run_name for r in trials) == [f"✂@2 trial-00{i}" for i in range(3)]
    # the summary links straight to the runs table and the sweep's run, past the UI's GenAI overview
    ui = f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}"
    assert f"Runs: {ui}/runs?workflowType=machine_learning" in proc.stdout
    assert f"Sweep run: {ui}/runs/{p.info.run_id}?workflowType=machine_learning" in proc.stdout
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_signature_pruner_prunes_after_warm_up_and_sweep_resumes(tmp_path):
    # learning rates that do not diverge: a diverging trial is pruned at once, warm-up or not
    over = ["trainer.epochs=3", "data.train_size=1000", "hydra.sweeper.n_trials=6", "pruner=signature",
            "pruner.n_startup_trials=3",
            "pruner.min_per_class=1", "optim.lr=tag(log, interval(0.01, 0.3))",
            "pruner.check_epochs=[2]", "pruner.bound=0.5", "hydra.sweeper.sampler.n_startup_trials=6"]
    _, storage, tracking = _sweep(tmp_path, *over)
    study = optuna.load_study(study_name="tiny", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 6
    # the first three run to the end (warm-up); forecasts are recorded from then on
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials[:3])
    assert any("forecast_p_high" in t.user_attrs for t in study.trials[3:])
    # the same command again with a larger budget resumes the study: only the missing trials run
    _sweep(tmp_path, *over[:2], "hydra.sweeper.n_trials=8", *over[3:])
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 8
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("pruned_sweep")
    parents = client.search_runs([exp.experiment_id], "tags.`epochgraph.role` = 'sweep'")
    assert len(parents) == 1  # the sweep's parent run is reused, not duplicated
    trial_runs = client.search_runs([exp.experiment_id], "tags.study = 'tiny' and tags.trial != ''")
    assert sorted(int(r.data.tags["trial"]) for r in trial_runs) == list(range(8))


@pytest.mark.slow
def test_forecast_pruner_in_a_live_sweep_forecasts_from_the_first_incumbent(tmp_path):
    # the forecast alone, warm from the committed tables, pruning for good (pausing: the sweep test below)
    proc, storage, tracking = _sweep(tmp_path, "trainer.epochs=3", "data.train_size=1000", "hydra.sweeper.n_trials=4",
                              "pruner=forecast", "pruner.min_epoch=1", "pruner.delta=0.2", "pruner.base=null",
                              "optim.lr=tag(log, interval(0.01, 0.3))")
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.state.is_finished() for t in study.trials] == [True] * 4
    first_complete = min(t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    later = [t for t in study.trials if t.number > first_complete]
    # every later trial was forecast at epochs 1 and 2 (not 3: the last epoch is known, not forecast)
    for t in later:
        assert 0.0 <= t.user_attrs["forecast_p_high"] <= 1.0 and 0.0 < t.user_attrs["forecast_final_val_acc"] < 1.2
        assert "forecast_upper_001" in t.system_attrs and "forecast_upper_003" not in t.system_attrs
    # before any trial completed there is nothing to beat, but the forecast of the final value is shown
    assert 0.0 < study.trials[first_complete].user_attrs["forecast_final_val_acc"] < 1.2
    assert "forecast_p_high" not in study.trials[0].user_attrs
    assert "Epochs trained" in proc.stdout
    # what it printed is also a file beside the curves (the docs include one): the same lines
    summary = (tmp_path / "multirun" / "summary.txt").read_text()
    assert summary.splitlines()[0].startswith("Sweep tiny: ") and summary.strip() in proc.stdout
    # beside the curve in MLflow: the forecast of every epoch it was made at, complete trials included
    client = MlflowClient(tracking)
    runs = {int(r.data.tags["trial"]): r for r in client.search_runs(
        [client.get_experiment_by_name("pruned_sweep").experiment_id], "tags.trial != ''")}
    for t in study.trials:
        run_id = runs[t.number].info.run_id
        finals = client.get_metric_history(run_id, "forecast/final_val_acc")
        uppers = {m.step: m.value for m in client.get_metric_history(run_id, "forecast/upper")}
        assert sorted(m.step for m in finals) == [e for e in (1, 2) if e in t.intermediate_values]
        assert all(uppers[m.step] >= m.value for m in finals)  # the bound lies above the median forecast
        probs = {m.step for m in client.get_metric_history(run_id, "forecast/probability")}
        assert probs == ({1, 2} & set(t.intermediate_values) if t.number > first_complete else set())
        assert all(0.0 <= uppers[e] <= 1.0 for e in uppers)  # an accuracy's forecast, shown within [0, 1]
        # the picture of the curve beside its forecasts, and what decided at its last forecast, in words
        assert "forecast.png" in [f.path for f in client.list_artifacts(run_id)]
        if t.number > first_complete:
            said = runs[t.number].data.tags["forecast_decision"]
            assert said.startswith(("pruned: P ", "kept: P ", "kept: the rank check is closed")), said
            assert t.user_attrs["forecast_decision"] == said


SAMPLERS = sorted(p.stem for p in (Path(CONF_DIR) / "hydra" / "sweeper" / "sampler").glob("*.yaml"))


def _sweeper(*overrides):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/sweeper=epochgraph", *overrides],
                      return_hydra_config=True)
    return instantiate(cfg.hydra.sweeper)


def test_plain_sweeper_has_a_default_search_space():
    sweeper = _sweeper()
    space, fixed = search_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert set(space) == {"optim.lr", "optim.momentum"} and not fixed
    assert space["optim.lr"].log and (space["optim.lr"].low, space["optim.lr"].high) == (0.001, 1.0)
    assert isinstance(sweeper.sampler_cfg, optuna.samplers.TPESampler)


def test_command_line_entries_replace_add_and_drop_search_space_entries():
    sweeper = _sweeper("++hydra.sweeper.params.optim.lr='interval(0.01, 0.1)'",
                       "++hydra.sweeper.params.optim.momentum=null",
                       "++hydra.sweeper.params.model.dropout='choice(0.0, 0.25)'")
    space, _ = search_space([f"{k}={v}" for k, v in sweeper.params.items()] + ["trainer.batch_size=32,64"])
    assert set(space) == {"optim.lr", "model.dropout", "trainer.batch_size"}
    assert (space["optim.lr"].low, space["optim.lr"].high, space["optim.lr"].log) == (0.01, 0.1, False)
    assert space["trainer.batch_size"] == CategoricalDistribution([32, 64])


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_preset_builds_an_optuna_sampler(name):
    sampler = _sweeper(f"hydra/sweeper/sampler={name}").sampler_cfg
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    assert type(sampler).__name__.lower().startswith(name.replace("_", ""))


def _sampler_node(name: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+experiment=pruned_sweep", f"hydra/sweeper/sampler={name}",
                                                      "~hydra.sweeper.sampler.n_startup_trials"],
                      return_hydra_config=True)
    return cfg.hydra.sweeper.sampler, search_space([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])[0]


def _ask_and_tell(study, space, n):
    for _ in range(n):
        trial = study.ask(space)
        study.tell(trial, trial.params["optim.lr"])
    return [tuple(sorted(t.params.items())) for t in study.trials]


@pytest.mark.parametrize("name", SAMPLERS)
def test_seeded_sampler_is_reproducible_and_never_replays_across_processes(tmp_path, name):
    from hydra_plugins.epochgraph_sweeper.sweeper import make_sampler

    node, space = _sampler_node(name)
    # one process, a new study: the same configurations every time
    first = _ask_and_tell(optuna.create_study(sampler=make_sampler(node)), space, 4)
    assert _ask_and_tell(optuna.create_study(sampler=make_sampler(node)), space, 4) == first
    # a resumed sweep (a new process, so a new sampler, on the same study) continues with new configurations
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    _ask_and_tell(optuna.create_study(study_name="s", storage=storage, sampler=make_sampler(node)), space, 3)
    resumed = _ask_and_tell(optuna.load_study(study_name="s", storage=storage, sampler=make_sampler(node)), space, 3)
    assert resumed[:3] == first[:3] and len(set(resumed)) == 6
    # two workers asking side by side from one study
    a = optuna.create_study(study_name="w", storage=storage, sampler=make_sampler(node))
    b = optuna.load_study(study_name="w", storage=storage, sampler=make_sampler(node))
    for _ in range(3):
        _ask_and_tell(a, space, 1)
        _ask_and_tell(b, space, 1)
    assert len(set(_ask_and_tell(a, space, 0))) == 6


def test_trial_seeds_differ_by_trial_and_by_seed():
    from epochgraph.search.sampler import TrialSeededSampler

    s0 = TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed=0)
    s1 = TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed=1)
    seeds = {s0.trial_seed(n) for n in range(100)} | {s1.trial_seed(n) for n in range(100)}
    assert len(seeds) == 200
    with pytest.raises(ValueError, match="seed=-1 must be a non-negative integer"):
        TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed=-1)


@pytest.mark.slow
def test_a_sweep_pauses_trials_and_resumes_them_in_the_last_pass(tmp_path):
    # tests.pausing.PauseOdd: trial 1 pauses after epoch 1 and may resume once 2 trials completed, which is
    # only after the budget of 3 configurations is spent: the last pass resumes it as trial 3
    proc, storage, tracking = _sweep(tmp_path, "hydra.sweeper.n_trials=3", "trainer.epochs=3", "pruner=none",
                                     "pruner._target_=tests.pausing.PauseOdd", "+pruner.at=1", "+pruner.after=2")
    study = optuna.load_study(study_name="tiny", storage=storage)
    S = optuna.trial.TrialState
    assert [t.state for t in study.trials] == [S.COMPLETE, S.PRUNED, S.COMPLETE, S.COMPLETE]
    assert study.trials[1].system_attrs["paused_at_epoch"] == 1 and study.trials[3].user_attrs["resumed_from"] == 1
    assert study.trials[3].params == study.trials[1].params
    assert sorted(study.trials[3].intermediate_values) == [1, 2, 3]
    assert "trial   3 RESUMES trial 1 from epoch 1" in proc.stdout and "trial   1 PAUSED" in proc.stdout
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("pruned_sweep").experiment_id])
    trials = sorted(r.info.run_name for r in runs if "trial" in r.data.tags)
    assert trials == ["✓ trial-000", "✓ trial-001→003", "✓ trial-002"]  # one run per configuration
    parent = next(r for r in runs if r.data.tags.get("epochgraph.role") == "sweep").data.metrics
    assert (parent["trials_complete"], parent["trials_paused"], parent["trials_resumed"]) == (3, 0, 1)
    assert parent["epochs_trained"] == 9 and parent["epochs_budget"] == 9 and parent["checkpoint_peak_bytes"] > 0
    assert "3 complete, 0 pruned, 0 paused, 1 resumed" in proc.stdout and "MB at their peak" in proc.stdout
    # optuna-dashboard shows a paused trial as pruned: its note says where it paused and which trial went on
    from tests.pausing import dashboard_note

    paused_note = dashboard_note(study, study.trials[1]._trial_id)
    assert "**Paused** after epoch 1" in paused_note and "**Resumed** by trial 3, from epoch 1." in paused_note
    assert "Goes on from paused trial 1" in dashboard_note(study, study.trials[3]._trial_id)
