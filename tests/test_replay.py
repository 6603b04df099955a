"""Replaying recorded runs through pruners: the measured savings, regret and false prunes."""

import math

import optuna
import pytest

from epochgraph.errors import EpochgraphError
from epochgraph.forecast.records import RunRecord
from epochgraph.graph.signature import NONFINITE
from epochgraph.search.replay import pruner_factory, random_orders, replay, replay_orders, run_length


def _run(run_id: str, curve: list[float], nonfinite: list[float] | None = None) -> RunRecord:
    history = {"val_acc": curve, "val_loss": [1.0] * len(curve), NONFINITE: nonfinite or [0.0] * len(curve)}
    finite = [v for v in curve if math.isfinite(v)]
    return RunRecord(run_id, {}, {}, history, finite[-1])


# finals 0.9, 0.8, 0.3, 0.2: high (>= median 0.55) are the first two
RUNS = [_run("best", [0.6, 0.8, 0.9]), _run("good", [0.4, 0.7, 0.8]), _run("bad", [0.2, 0.25, 0.3]),
        _run("worst", [0.1, 0.15, 0.2])]


def test_no_pruning_trains_everything_with_zero_regret():
    res = replay(RUNS, [0, 1, 2, 3], optuna.pruners.NopPruner())
    assert res["epochs_frac"] == 1.0 and res["regret"] == 0.0 and res["pruned"] == 0 and res["false_prune"] == 0


def test_threshold_pruner_measures_saving_regret_and_false_prunes():
    # prunes at epoch 1 every run below 0.5: "good" (high) and the two low ones
    res = replay(RUNS, [3, 2, 1, 0], optuna.pruners.ThresholdPruner(lower=0.5))
    assert res["epochs_frac"] == pytest.approx((3 + 1 + 1 + 1) / 12)
    assert res["regret"] == 0.0  # the best run ran to the end
    assert res["pruned"] == 3
    assert res["false_prune"] == pytest.approx(1 / 3)  # one of the three pruned was high
    assert res["high_pruned"] == pytest.approx(1 / 2)  # one of the two high runs was pruned
    # a stricter bound loses the best run too: the regret is what the search missed
    strict = replay(RUNS, [0, 1, 2, 3], optuna.pruners.ThresholdPruner(lower=0.65))
    assert strict["regret"] == pytest.approx(0.9 - 0.0)  # nothing completed
    assert strict["high_pruned"] == 1.0


def test_high_quantile_changes_which_runs_count_as_high():
    res = replay(RUNS, [0, 1, 2, 3], optuna.pruners.ThresholdPruner(lower=0.5), high_quantile=0.9)
    assert res["false_prune"] == 0.0  # only "best" is high, and it was kept


def test_a_diverged_run_stops_early_and_the_signature_pruner_prunes_it_at_once():
    diverged = _run("nan", [0.1, 0.1, math.nan], nonfinite=[0.0, 1.0, 1.0])
    assert run_length(diverged) == 2
    runs = [*RUNS, diverged]
    factory = pruner_factory("signature", 3, {"n_startup_trials": 2})
    res = replay(runs, [0, 1, 2, 3, 4], factory())
    # every run trains to the end (too few completed trials to fit) except the diverged one, pruned at
    # the epoch its weights turned non-finite
    assert res["pruned"] == 1 and res["epochs_frac"] == pytest.approx((12 + 2) / 14)
    assert res["false_prune"] == 0.0


def test_replay_orders_aggregates_over_fresh_pruners():
    orders = random_orders(len(RUNS), 5, seed=1)
    assert len({tuple(o) for o in orders}) > 1
    agg = replay_orders(RUNS, pruner_factory("median", 3, {"n_startup_trials": 1, "n_warmup_steps": 0}), orders)
    per = agg["per_order"]
    assert agg["epochs_frac"][0] == pytest.approx(sum(r["epochs_frac"] for r in per) / 5)
    assert agg["zero_regret_share"] == sum(r["regret"] == 0 for r in per) / 5
    assert agg["epochs_frac"][0] < 1.0  # the median pruner does stop the weak runs after the first one
    # worker processes replay the same orders to the same numbers
    par = replay_orders(RUNS, pruner_factory("median", 3, {"n_startup_trials": 1, "n_warmup_steps": 0}), orders,
                        n_jobs=2)
    assert [{k: v for k, v in r.items() if k != "pruner_s"} for r in par["per_order"]] == \
        [{k: v for k, v in r.items() if k != "pruner_s"} for r in per]


def test_pruner_factory_reads_the_sweep_configs_and_rejects_bad_ones():
    hb = pruner_factory("hyperband", 15)()
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    sig = pruner_factory("signature", 15, {"classifier": "mlp", "check_epochs": [1, 2]})()
    assert sig.classifier == "mlp" and sig.check_epochs == [1, 2]
    with pytest.raises(EpochgraphError, match="unknown pruner 'nope'"):
        pruner_factory("nope", 3)
    with pytest.raises(EpochgraphError, match=r"pruner signature with \{'bound': 2\}: bound=2 must be in \(0, 1\)"):
        pruner_factory("signature", 3, {"bound": 2})


def test_the_draws_step_reuses_a_setting_scored_before_only_when_nothing_it_depends_on_changed(monkeypatch, tmp_path):
    from epochgraph.bench import draws

    runs = [_run(f"r{i}", [0.1 * i, 0.1 * i + 0.02, 0.1 * i + 0.04]) for i in range(1, 7)]
    b = {"tables": str(tmp_path), "workers": 1,
         "draws": {"study_size": 4, "draws": 2, "seed": 0,
                   "optuna": {"threshold": {"pruner": "median", "n_startup_trials": 1}, "none": {"pruner": "none"}},
                   "default": False}}
    first = draws.draws_population(b, "p", runs)
    assert first["settings"]["none"]["epochs_frac"][0] == 1.0 and first["settings"]["none"]["regret_pp"][0] == 0
    calls = []
    real = draws.score
    monkeypatch.setattr(draws, "score", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = draws.draws_population(b, "p", runs, first)
    assert calls == [] and again["settings"] == first["settings"]  # nothing replayed again
    b["draws"]["optuna"]["threshold"]["n_startup_trials"] = 2  # one setting changed: only it is replayed
    draws.draws_population(b, "p", runs, first)
    assert calls == [1]
    b["draws"]["seed"] = 1  # other draws: everything is replayed
    draws.draws_population(b, "p", runs, first)
    assert calls == [1, 1, 1]


def test_the_headline_scores_the_setting_of_ours_the_other_populations_would_choose():
    from epochgraph.bench.draws import headline

    def r(epochs, regret, kept):
        return {"epochs_frac": [epochs, 0.0], "regret_pp": [regret, 0.0], "kept_best": kept}

    def pop(name, cheap_ours_safe):
        return {"population": name, "runs": 64, "epochs": 20, "settings": {
            "forecast": r(0.7, 0.0, 1.0), "forecast-cheap": r(0.3, 0.0 if cheap_ours_safe else 2.0,
                                                              1.0 if cheap_ours_safe else 0.4),
            "median": r(0.2, 1.0, 0.4), "successive_halving": r(0.1, 2.0, 0.2), "patient": r(0.9, 0.0, 1.0)}}

    # the cheap setting is safe everywhere but on "c": the others choose it for "c" (and it fails there);
    # for "a" and "b" the others include "c", so they choose the shipped one
    md = headline([pop("a", True), pop("b", True), pop("c", False)])
    rows = {line.split(" ")[1]: line for line in md.splitlines()[2:]}
    assert "| forecast: 0.70" in rows["a"] and "| forecast: 0.70" in rows["b"]
    assert "| forecast-cheap: 0.30, kept 40 %, 2.00 ± 0.00 pp" in rows["c"]
    assert "0.78 × Patient's epochs (> 0.6)" in rows["a"] and "safe;" in rows["a"]


def test_the_hindsight_cut_is_the_cheapest_single_cut_that_keeps_the_best():
    import numpy as np

    from epochgraph.bench.draws import hindsight_cut

    # the best run leads from epoch 1: train all 1 epoch, continue only the leader
    assert hindsight_cut(RUNS, [np.arange(4)]) == {"epochs_frac": pytest.approx((3 + 1 + 1 + 1) / 12), "t": 1, "k": 1}
    # a late bloomer that is last until the final epoch: no cut keeps it but keeping everything
    late = [*RUNS, _run("late", [0.05, 0.1, 0.95])]
    assert hindsight_cut(late, [np.arange(5)])["epochs_frac"] == 1.0


def test_a_pausing_pruner_resumes_trials_without_training_an_epoch_twice():
    from epochgraph.search.forecast_pruner import ForecastPruner
    from epochgraph.search.trial_attrs import RESUMED_FROM_ATTR, mark_paused

    class Scripted(ForecastPruner):
        """Pauses every trial but the first at epoch 1; resumes paused trial n once the study holds n + 3."""

        def __init__(self):
            super().__init__(max_epoch=3, pause=True)

        def prune(self, study, trial):
            stop = trial.number > 0 and trial.last_step == 1 and RESUMED_FROM_ATTR not in trial.user_attrs
            if stop:  # a pause, written into the trial as the forecast pruner writes it
                mark_paused(study, trial, 1)
            return stop

        def should_resume(self, study, trial, last_pass=False):
            return len(study.trials) >= trial.number + 3

    runs = [_run(f"r{i}", [0.1 * i, 0.1 * i + 0.05, 0.1 * i + 0.1]) for i in range(1, 5)]
    res = replay(runs, [0, 1, 2, 3], Scripted())
    # trial 0 runs 3 epochs; 1, 2, 3 pause at epoch 1 (too few trials before each new one to resume), and all
    # three resume in the last pass as trials 4, 5, 6, each from epoch 2: every run trains its 3 epochs once
    assert res["epochs_frac"] == 1.0 and res["regret"] == 0.0 and res["resumed"] == 3 and res["pruned"] == 0
    assert res["best_done_frac"] == 1.0  # the best run (r4) completed last


def test_a_diverged_trial_is_stopped_for_good_not_paused():
    from epochgraph.search.forecast_pruner import ForecastPruner
    from epochgraph.search.trial_attrs import diverged, trial_history

    class Resumer(ForecastPruner):
        """Stops only what diverged, and would resume anything paused."""

        def __init__(self):
            super().__init__(max_epoch=3, pause=True)

        def prune(self, study, trial):
            history = trial_history(trial)
            return bool(history) and diverged(history)

        def should_resume(self, study, trial, last_pass=False):
            return True

    nan = _run("nan", [0.1, 0.1, math.nan], nonfinite=[0.0, 1.0, 1.0])
    res = replay([*RUNS, nan], [4, 0, 1, 2, 3], Resumer())
    assert res["pruned"] == 1 and res["resumed"] == 0


def test_orders_whose_best_trial_never_completed_aggregate_without_a_time_to_the_best():
    class FirstOut(optuna.pruners.BasePruner):
        """Prunes the study's first trial at its first epoch, nothing else."""

        def prune(self, study, trial):
            return trial.number == 0

    # "best" first: pruned, the time to the best is unknown; "best" last: it completes after 10 of the 12 epochs
    agg = replay_orders(RUNS, FirstOut, [[0, 1, 2, 3], [3, 2, 1, 0]])
    per = [r["best_done_frac"] for r in agg["per_order"]]
    assert math.isnan(per[0]) and per[1] == pytest.approx(10 / 12)
    assert agg["best_done_frac"] == (pytest.approx(10 / 12), 0.0)
    assert agg["regret"][0] == pytest.approx((0.9 - 0.8) / 2)  # lost in the first order only


def test_the_last_pass_resumes_the_best_placed_first_and_scores_the_whole_order():
    from epochgraph.search.forecast_pruner import ForecastPruner
    from epochgraph.search.trial_attrs import RESUMED_FROM_ATTR, mark_paused

    class PauseAllButFirst(ForecastPruner):
        """Pauses every trial but the first at epoch 1; resumes only in the last pass."""

        def __init__(self):
            super().__init__(max_epoch=3, pause=True)
            self.asked = []

        def prune(self, study, trial):
            stop = trial.number > 0 and trial.last_step == 1 and RESUMED_FROM_ATTR not in trial.user_attrs
            if stop:
                mark_paused(study, trial, 1)
            return stop

        def should_resume(self, study, trial, last_pass=False):
            if last_pass:
                self.asked.append(trial.number)
            return last_pass

    runs = [_run(f"r{i}", [v, v + 0.05, v + 0.1]) for i, v in enumerate([0.5, 0.2, 0.4, 0.3])]
    pruner = PauseAllButFirst()
    res = replay(runs, [0, 1, 2, 3], pruner)
    # the paused trials 1, 2, 3 stood at 0.2, 0.4, 0.3 at epoch 1: asked and resumed 2, then 3, then 1
    assert pruner.asked == [2, 3, 1] and res["resumed"] == 3 and res["epochs_frac"] == 1.0 and res["regret"] == 0
