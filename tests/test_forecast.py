"""The final-accuracy forecaster, the predictive-termination pruner and the top-k baseline."""

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState, create_trial

from epochgraph.errors import EpochgraphError
from epochgraph.forecast.forecaster import FinalAccuracyForecaster, pair_features, training_pairs
from epochgraph.forecast.population import write_table
from epochgraph.search.forecast_pruner import ForecastPruner, fit_forecaster, load_forecaster, log_forecaster
from epochgraph.search.topk_pruner import TopKPruner
from epochgraph.search.trial_attrs import EPOCH_ATTR, SCHEDULE_ATTR

EPOCHS = 10


def curve(final: float, start: float, tau: float = 2.0, epochs: int = EPOCHS) -> dict[str, list[float]]:
    """A saturating learning curve from ``start`` (epoch 1) to about ``final``."""
    e = np.arange(1, epochs + 1)
    acc = final - (final - start) * np.exp(-(e - 1) / tau)
    loss = 2.3 * (1 - acc) + 0.1
    return {"val_acc": acc.tolist(), "val_loss": loss.tolist(), "train_acc": (acc + 0.02).tolist(),
            "train_loss": (loss * 0.9).tolist()}


def population(n: int = 40, seed: int = 0) -> list[dict[str, list[float]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        final = rng.uniform(0.3, 0.9)
        out.append(curve(final, final * rng.uniform(0.5, 0.8), tau=rng.uniform(1.0, 3.0)))
    return out


def test_pairs_cover_every_pair_of_reached_epochs():
    short = curve(0.8, 0.5, epochs=4)
    X, y, groups = training_pairs([short, curve(0.6, 0.3)])
    assert len(y) == 4 * 3 // 2 + EPOCHS * (EPOCHS - 1) // 2 and set(groups) == {0, 1}
    # the target is the gain in val_acc from t to s; the horizon columns say which pair it is
    assert y[0] == pytest.approx(short["val_acc"][1] - short["val_acc"][0])
    # horizon relative to the 4 epochs the short training ran: t/T, s/T, (s - t)/T, log(s/t)
    assert X[0, 0] == pytest.approx(short["val_acc"][0])
    assert X[0, -8:-4] == pytest.approx([0.25, 0.5, 0.25, math.log(2)])
    assert np.isnan(X[0, -4:]).all()  # no schedule declared: its features are missing, not made up
    diverged = {**curve(0.8, 0.5), "val_acc": [0.4, 0.5, math.nan, math.nan]}
    assert len(training_pairs([diverged])[1]) == 1  # only the epochs with a val_acc
    with pytest.raises(EpochgraphError, match="needs 3"):
        pair_features(diverged, 3, 5)


@pytest.mark.parametrize("method", ["quantile_gbm", "forest", "conformal"])
def test_forecaster_fit_predict_contract(method):
    hs = population()
    X, y, g = training_pairs(hs)
    fc = FinalAccuracyForecaster(method=method, levels=(0.1, 0.5, 0.9))
    assert fc.fit(X, y, groups=g) is fc
    q = fc.predict_quantiles(X[:50])
    assert q.shape == (50, 3) and np.all(np.diff(q, axis=1) >= 0)
    assert fc.predict(X[:50]) == pytest.approx(q[:, 1])
    # a curve still far from its plateau is forecast to gain; the forecast median is near the truth
    test = curve(0.8, 0.5)
    now, qs = fc.forecast([test], 2, EPOCHS)
    assert now[0] == pytest.approx(test["val_acc"][1])
    assert qs[0, 1] > now[0] + 0.05 and abs(qs[0, 1] - 0.8) < 0.08
    # P(final >= v) falls as v rises
    p = fc.prob_at_least([test] * 3, 2, EPOCHS, [0.5, qs[0, 1], 0.99])
    assert p[0] > 0.85 and p[2] < 0.1 and p[0] >= p[1] >= p[2]


def test_forecaster_rejects_bad_settings():
    X, y, _ = training_pairs(population(5))
    with pytest.raises(EpochgraphError, match="unknown forecast method 'bogus'"):
        FinalAccuracyForecaster(method="bogus").fit(X, y)
    with pytest.raises(EpochgraphError, match="levels=\\[0.9, 0.5\\] must be increasing"):
        FinalAccuracyForecaster(levels=(0.9, 0.5)).fit(X, y)
    with pytest.raises(EpochgraphError, match="at least 2"):
        FinalAccuracyForecaster().fit(X[:1], y[:1])


def _trial(history: dict[str, list[float]], epochs: int, state=TrialState.RUNNING, value=None):
    attrs = {EPOCH_ATTR.format(e + 1): {k: v[e] for k, v in history.items()} for e in range(epochs)}
    return create_trial(state=state, value=value, intermediate_values={e + 1: history["val_acc"][e]
                                                                         for e in range(epochs)},
                        user_attrs=attrs)


def _study(pruner, finished):
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for h in finished:
        study.add_trial(_trial(h, EPOCHS, TrialState.COMPLETE, h["val_acc"][-1]))
    return study


def _table(tmp_path, histories, experiment):
    rows = [{"experiment": experiment, "run_id": f"{experiment}-{i}", "seed": i, "final_acc": h["val_acc"][-1],
             "epoch": e + 1, **{k: v[e] for k, v in h.items()}}
            for i, h in enumerate(histories) for e in range(len(h["val_acc"]))]
    return write_table(pd.DataFrame(rows), tmp_path / f"{experiment}.parquet")


def test_prunes_what_cannot_beat_the_best_and_keeps_what_can(tmp_path):
    _table(tmp_path, population(40), "warm")
    pruner = ForecastPruner(max_epoch=EPOCHS, delta=0.05, warm_start=str(tmp_path), min_rank_corr=None)
    best = curve(0.85, 0.6)
    study = _study(pruner, [best])
    hopeless, rising = curve(0.45, 0.3), curve(0.95, 0.7, tau=3.0)
    assert pruner.prune(study, _trial(hopeless, 2)) is True
    rising_trial = _trial(rising, 2)
    assert pruner.prune(study, rising_trial) is False
    assert pruner.last_forecast_value[rising_trial.number] == pytest.approx(0.95, abs=0.08)
    # no incumbent yet: nothing to beat, nothing pruned; at the last epoch there is nothing to forecast
    assert pruner.prune(_study(pruner, []), _trial(hopeless, 2)) is False
    assert pruner.prune(study, _trial(hopeless, EPOCHS)) is False
    # a non-finite loss is pruned at once
    nan = {**hopeless, "train_loss": [math.nan] * EPOCHS}
    assert pruner.prune(study, _trial(nan, 1)) is True


def test_cold_start_waits_for_finished_trials():
    pruner = ForecastPruner(max_epoch=EPOCHS, min_trials=4)
    hs = population(3)
    study = _study(pruner, hs)
    assert pruner.prob_beat_best(study, _trial(curve(0.3, 0.2), 2)) is None
    study.add_trial(_trial(population(1, seed=5)[0], EPOCHS, TrialState.COMPLETE, 0.5))
    study.add_trial(_trial(curve(0.9, 0.5), 3, TrialState.PRUNED))  # a pruned trial's pairs are data too
    assert pruner.prob_beat_best(study, _trial(curve(0.3, 0.2), 2)) is not None


def test_warm_start_leaves_out_the_excluded_population(tmp_path):
    _table(tmp_path, population(10, seed=1), "a")
    _table(tmp_path, population(10, seed=2), "b")
    only_a = ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path), warm_exclude=["b"])
    both = ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path))
    assert len(both._warm_histories) == 2 * len(only_a._warm_histories) == 2 * 10
    with pytest.raises(EpochgraphError, match="leaves no training"):
        ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path), warm_exclude=["a", "b"])
    with pytest.raises(EpochgraphError, match="'.*absent', which does not exist"):
        ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EpochgraphError, match="holds no population table"):
        ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path / "empty"))


def test_warm_start_from_the_registry(tracking_uri):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    model = fit_forecaster(population(20), max_epoch=EPOCHS, levels=(0.5, 0.95))
    with mlflow.start_run():
        log_forecaster(model, registered_model_name="fc")
    loaded = load_forecaster("models:/fc/1")
    assert np.array_equal(loaded.train_y_, model.train_y_)
    pruner = ForecastPruner(max_epoch=EPOCHS, warm_start="models:/fc/1", min_rank_corr=None)
    assert pruner.prune(_study(pruner, [curve(0.85, 0.6)]), _trial(curve(0.45, 0.3), 2)) is True
    with pytest.raises(EpochgraphError, match="cannot load the forecaster 'models:/absent/1'"):
        ForecastPruner(max_epoch=EPOCHS, warm_start="models:/absent/1")


class _Always(optuna.pruners.BasePruner):
    def __init__(self, answer: bool) -> None:
        self.answer = answer

    def prune(self, study, trial) -> bool:
        return self.answer


def test_wrapped_pruner_veto_and_earlier_prunes(tmp_path):
    _table(tmp_path, population(40), "warm")
    rising, hopeless = curve(0.95, 0.7, tau=3.0), curve(0.45, 0.3)

    def pruner(answer, combine):
        return ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path), base=_Always(answer), combine=combine,
                              min_rank_corr=None)

    veto = pruner(True, "and")
    study = _study(veto, [curve(0.85, 0.6)])
    assert veto.prune(study, _trial(rising, 2)) is False  # the base would prune, the forecast vetoes
    assert veto.prune(study, _trial(hopeless, 2)) is True  # both agree
    earlier = pruner(False, "or")
    assert earlier.prune(study, _trial(hopeless, 2)) is True  # the base keeps it, the forecast prunes
    assert earlier.prune(study, _trial(rising, 2)) is False
    with pytest.raises(ValueError, match="combine='xor'"):
        pruner(True, "xor")
    with pytest.raises(TypeError, match="must be an Optuna pruner"):
        ForecastPruner(max_epoch=EPOCHS, base="median")


def test_topk_keeps_only_the_best_k_so_far():
    pruner = TopKPruner(epoch=1, k=2)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for v in (0.5, 0.7):
        study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={1: v}))
    ranked = {0.6: False, 0.8: False, 0.4: True}
    for v, expected in ranked.items():
        trial = create_trial(state=TrialState.RUNNING, intermediate_values={1: v})
        assert pruner.prune(study, trial) is expected
    assert pruner.prune(study, create_trial(state=TrialState.RUNNING, intermediate_values={1: 0.1, 2: 0.2})) is False
    with pytest.raises(ValueError, match="k=0 must be >= 1"):
        TopKPruner(k=0)


def test_it_prunes_only_at_epochs_the_studys_completed_trials_show_rank_the_end(tmp_path):
    _table(tmp_path, population(40), "warm")
    hopeless = curve(0.45, 0.3)
    # completed trials whose epoch 2 ranks the finals backwards (slow starters finish best): no prune there
    crossing = [curve(0.6 + 0.05 * k, 0.55 - 0.05 * k, tau=1.0 + k) for k in range(6)]
    gated = ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path))
    study = _study(gated, crossing)
    assert gated.rank_corr(study, 2) < 0 and gated.trusted_at(study, 2) is False
    kept = _trial(hopeless, 2)
    assert gated.prune(study, kept) is False
    # what decided, in words: the number the rule read and what it was compared with
    said = gated.last_decision[kept.number]
    assert said.startswith("kept: the rank check is closed at epoch 2 (P 0.0") and "< δ 0.05: bound 0." in said
    best = max(h["val_acc"][-1] for h in crossing)
    assert f"vs best {best:.3f})" in said and gated.last_forecast_best[kept.number] == best
    # completed trials that keep their order: the forecast may prune
    ordered = [curve(0.6 + 0.05 * k, 0.4 + 0.05 * k) for k in range(6)]
    trusting = ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path))
    study = _study(trusting, ordered)
    assert trusting.rank_corr(study, 2) == pytest.approx(1.0) and trusting.trusted_at(study, 2)
    pruned = _trial(hopeless, 2)
    assert trusting.prune(study, pruned) is True
    assert trusting.last_decision[pruned.number].startswith("pruned: P 0.0")
    assert trusting.last_forecast_rule[pruned.number] < 0.05  # the rule's P, beside the recalibrated one shown
    # too few completed trials: nothing is trusted yet
    assert trusting.trusted_at(_study(trusting, ordered[:3]), 2) is False


def test_the_rank_check_over_the_contenders_ignores_what_chance_level_trials_vouch_for(tmp_path):
    _table(tmp_path, population(40), "warm")
    # four trials stuck near chance (ranked by any epoch) and four contenders whose epoch 2 ranks them backwards
    stuck = [curve(0.1 + 0.01 * k, 0.1 + 0.01 * k) for k in range(4)]
    contenders = [curve(0.8 + 0.02 * k, 0.6 - 0.04 * k, tau=1.0 + k) for k in range(4)]
    over_all = ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path), min_complete=4, rank_z=0.0)
    study = _study(over_all, stuck + contenders)
    assert over_all.rank_corr(study, 2) > 0.5 and over_all.trusted_at(study, 2)
    def top():  # one pruner per study: it caches rho by the number of completed trials
        return ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path), min_complete=4, rank_z=0.0, rank_top=0.5)

    pruner = top()
    study = _study(pruner, stuck + contenders)
    assert pruner.rank_corr(study, 2) < 0 and pruner.trusted_at(study, 2) is False
    # the same contenders in order: trusted over the top half too
    ordered = [curve(0.8 + 0.02 * k, 0.5 + 0.04 * k) for k in range(4)]
    pruner = top()
    assert pruner.trusted_at(_study(pruner, stuck + ordered), 2)
    # fewer contenders than min_complete: not trusted (6 completed, top half = 3 < 4)
    pruner = top()
    assert pruner.trusted_at(_study(pruner, stuck[:3] + ordered[1:]), 2) is False
    with pytest.raises(ValueError, match="rank_top=0 must be in"):
        ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path), rank_top=0)


def _step_curve(final: float, plateau: float, epochs: int = 40, drop: int = 30) -> dict[str, list[float]]:
    """Flat at ``plateau`` until the LR drop after epoch ``drop``, then a jump to about ``final``."""
    acc = [plateau + 0.01 * math.sin(e) for e in range(drop)] + [final] * (epochs - drop)
    lr = [0.1] * drop + [0.01] * (epochs - drop)
    loss = [2.3 * (1 - a) + 0.1 for a in acc]
    return {"val_acc": acc, "val_loss": loss, "train_acc": acc, "train_loss": loss, "lr": lr}


def test_told_of_a_drop_the_forecast_keeps_a_flat_trial_whose_like_jumped_after_it(tmp_path):
    rng = np.random.default_rng(3)
    warm = [_step_curve(p + rng.uniform(0.1, 0.2), p) for p in rng.uniform(0.55, 0.75, 30)]
    rows = [{"experiment": "step", "run_id": f"s{i}", "seed": i, "final_acc": h["val_acc"][-1], "trainer.epochs": 40,
             "epoch": e + 1, **{k: v[e] for k, v in h.items()}} for i, h in enumerate(warm) for e in range(40)]
    write_table(pd.DataFrame(rows), tmp_path / "step.parquet")
    pruner = ForecastPruner(max_epoch=40, warm_start=str(tmp_path), min_rank_corr=None)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    done = _step_curve(0.86, 0.72)
    study.add_trial(_trial(done, 40, TrialState.COMPLETE, 0.86))
    flat = _step_curve(0.9, 0.71)
    trial = _trial(flat, 20)
    trial.user_attrs[SCHEDULE_ATTR] = flat["lr"]  # the trial declared its schedule: a drop after epoch 30
    assert pruner.prune(study, trial) is False
    assert pruner.last_forecast[trial.number] >= 0.05
    assert pruner.last_forecast_value[trial.number] > 0.71 + 0.08  # the jump after the drop is expected


def test_a_study_that_reports_val_acc_alone_gets_a_curve_only_forecast(tmp_path, caplog):
    _table(tmp_path, population(40), "warm")
    pruner = ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path), min_rank_corr=None)
    only = {"val_acc": curve(0.85, 0.6)["val_acc"]}
    study = _study(pruner, [only])
    good = {"val_acc": curve(0.9, 0.7)["val_acc"]}
    with caplog.at_level("INFO", logger="epochgraph"):
        assert pruner.prune(study, _trial(good, 2)) is False  # missing losses are not a divergence
    assert pruner._metrics == ("val_acc",)
    assert any("forecasting from val_acc (the study reports no val_loss, train_acc, train_loss)" in r.message
               for r in caplog.records)
    assert pruner.prune(study, _trial({"val_acc": curve(0.4, 0.25)["val_acc"]}, 2)) is True


def test_the_probability_is_a_probability_and_falls_as_the_bar_rises(tmp_path):
    X, y, _ = training_pairs(population(40))
    fc = FinalAccuracyForecaster(levels=(0.1, 0.5, 0.9, 0.95)).fit(X, y)
    q = fc.predict_quantiles(X[:1])[0]
    gains = np.linspace(q[0] - 0.05, q[-1] + 0.05, 40)  # across the forecast and into both tails
    p = fc.prob_gain_at_least(np.repeat(X[:1], len(gains), axis=0), gains)
    assert np.all((p > 0) & (p < 1))
    assert np.all(np.diff(p) < 0)  # strictly: a continuous distribution, not a step between two levels
    assert fc.prob_gain_at_least(X[:1], [q[1]])[0] == pytest.approx(0.5, abs=1e-6)  # the median is the median


def test_the_recalibration_undoes_an_over_confident_probability():
    from epochgraph.forecast.recalibration import Recalibration

    rng = np.random.default_rng(0)
    truth = rng.uniform(0.01, 0.99, 4000)
    outcome = (rng.random(4000) < truth).astype(int)
    logit = np.log(truth / (1 - truth))
    raw = 1 / (1 + np.exp(-(3 * logit - 1)))  # too sure of itself, and too high
    r = Recalibration.fit(raw, outcome)
    assert r.slope == pytest.approx(1 / 3, rel=0.15) and r.points == 4000
    brier = lambda p: float(np.mean((p - outcome) ** 2))  # noqa: E731
    assert brier(r(raw)) < brier(raw) - 0.01
    grid = r(np.linspace(0.001, 0.999, 50))
    assert np.all(np.diff(grid) > 0) and np.all((grid > 0) & (grid < 1))  # strictly increasing, a probability
    # nothing to learn from: the identity
    assert Recalibration.fit(raw, np.ones(4000)) == Recalibration()
    assert Recalibration()(0.3) == pytest.approx(0.3)


def test_the_reported_probability_is_recalibrated_and_the_prune_rule_is_unchanged(tmp_path):
    _table(tmp_path, population(30, seed=1), "a")
    _table(tmp_path, population(30, seed=2), "b")
    pruner = ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path), min_rank_corr=None)
    plain = ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path), min_rank_corr=None, recalibrate=False)
    study = _study(pruner, [curve(0.8, 0.6)])
    recal = None
    for final in np.linspace(0.5, 0.95, 10):
        trial = _trial(curve(final, final * 0.7), 3)
        raw = pruner.prob_beat_best(study, trial, recalibrated=False)
        assert plain.prob_beat_best(study, trial) == pytest.approx(raw)  # recalibrate=False reports the raw P
        pruned = pruner.prune(study, trial)
        assert pruned == (raw < 0.05)  # the rule reads the forecast's own P, as before
        shown = pruner.last_forecast[trial.number]
        recal = pruner.recalibration()
        assert 0 < shown < 1 and shown == pytest.approx(float(recal(raw)))
    assert recal.points > 100  # learnt on held-out forecasts (two populations: five groups of trainings)


def test_min_progress_keeps_every_trial_for_that_share_of_its_epochs(tmp_path):
    _table(tmp_path, population(40), "warm")
    pruner = ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path), min_rank_corr=None, min_progress=0.5)
    study = _study(pruner, [curve(0.85, 0.6)])
    hopeless = curve(0.45, 0.3)
    early = _trial(hopeless, 2)
    assert pruner.prune(study, early) is False  # 2 of 10 epochs: not yet, whatever the forecast says
    assert pruner.last_forecast[early.number] < 0.05  # it is forecast (and recorded) all the same
    assert pruner.prune(study, _trial(hopeless, 5)) is True
    with pytest.raises(ValueError, match="min_progress=1.0 must be in"):
        ForecastPruner(max_epoch=EPOCHS, min_progress=1.0)


def test_a_trial_that_declares_its_own_length_is_forecast_to_its_own_end(tmp_path):
    from epochgraph.search.trial_attrs import PLANNED_EPOCHS_ATTR

    _table(tmp_path, population(40), "warm")
    pruner = ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path), min_rank_corr=None)
    study = _study(pruner, [curve(0.85, 0.6)])
    long_run = curve(0.9, 0.2, tau=8.0, epochs=2 * EPOCHS)
    at_max = _trial(long_run, EPOCHS)
    # without a declared length the pruner's max_epoch is its end: nothing left to forecast at that step
    assert pruner.prob_beat_best(study, at_max) is None
    declared = _trial(long_run, EPOCHS)
    declared.user_attrs[PLANNED_EPOCHS_ATTR] = 2 * EPOCHS  # as a trial without a storage keeps it
    p = pruner.prob_beat_best(study, declared)
    assert p is not None and 0 <= p <= 1
    # halfway through its 20 epochs is forecast as halfway, not as an end at 10
    assert pruner.last_forecast_value[declared.number] > long_run["val_acc"][EPOCHS - 1]
