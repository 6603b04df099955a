"""The benchmark's peer that pauses outside Optuna: promotion-type ASHA as Syne Tune runs it, on recorded curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from epochgraph.bench import draws, syne_tune_peer
from epochgraph.errors import EpochgraphError
from epochgraph.forecast.records import RunRecord

T = 9  # epochs: with eta 3 the rungs are at epochs 1, 3 and 9


def _run(i: int, curve: list[float]) -> RunRecord:
    return RunRecord(f"r{i}", {}, {}, {"val_acc": curve}, curve[-1])


def _flat(n: int) -> list[RunRecord]:
    """``n`` trainings whose val_acc never changes: the early ranks are the final ones (the best is r{n-1})."""
    return [_run(i, [0.1 + 0.08 * i] * T) for i in range(n)]


def test_syne_tune_is_installed_with_the_promotion_type():
    assert syne_tune_peer.available()


def test_where_early_ranks_are_final_ones_asha_pauses_and_resumes_keeps_the_best_and_saves_epochs():
    runs = _flat(9)
    order = [3, 8, 0, 5, 1, 7, 2, 6, 4]
    out = syne_tune_peer.asha_promotion([runs[i] for i in order])
    trained = out["epochs_frac"] * 9 * T
    assert trained == pytest.approx(round(trained))  # whole epochs, each counted once
    assert 9 <= trained < 9 * T  # every trial reached the first rung; not every one went on
    assert out["regret"] == 0.0 and out["resumed"] >= 1  # the best was paused at a rung, promoted, and completed
    assert 0 < out["best_done_frac"] <= out["epochs_frac"]


def test_a_late_bloomer_stays_paused_and_is_lost():
    runs = _flat(9)
    # the best at the end sits last at every rung before it: ASHA never promotes it
    runs[0] = _run(0, [0.05] * (T - 1) + [0.99])
    out = syne_tune_peer.asha_promotion(runs)
    assert out["regret"] == pytest.approx(0.99 - runs[8].final_acc)
    assert math.isnan(out["best_done_frac"])


def test_the_draws_step_scores_the_peer_on_its_draws_and_keeps_what_it_scored_before_when_asked(monkeypatch,
                                                                                                 tmp_path):
    runs = _flat(9)
    b = {"tables": str(tmp_path), "workers": 1,
         "draws": {"study_size": 6, "draws": 2, "seed": 0, "optuna": {"none": {"pruner": "none"}},
                   "peers": {"syne_tune_asha": {"eta": 3}}, "default": False}}
    first = draws.draws_population(b, "p", runs)
    asha = first["settings"]["syne_tune_asha"]
    assert asha["regret_pp"] == [0.0, 0.0] and asha["kept_best"] == 1.0 and 0 < asha["epochs_frac"][0] < 1
    assert first["settings"]["none"]["epochs_frac"][0] == 1.0
    # the same draws as the Optuna pruners, one study per draw, in its drawn order
    drawn = draws.draw_studies(len(runs), 6, 2, 0)
    alone = [syne_tune_peer.asha_promotion([runs[i] for i in d])["epochs_frac"] for d in drawn]
    assert asha["epochs_frac"][0] == pytest.approx(float(np.mean(alone)))
    # rescore=false: a setting the last run scored is kept though its code changed; the peer is scored again
    calls = []
    real = draws.score
    monkeypatch.setattr(draws, "score", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(draws, "fingerprint", lambda tables: "other code")
    b["draws"]["rescore"] = False
    again = draws.draws_population(b, "p", runs, first)
    assert calls == [] and again["settings"]["none"] == first["settings"]["none"]
    assert again["settings"]["syne_tune_asha"]["epochs_frac"] == asha["epochs_frac"]
    b["draws"]["rescore"] = True
    draws.draws_population(b, "p", runs, first)
    assert calls == [1]
    # the headline has its column, and does not count it among Optuna's settings
    md = draws.headline([{**again, "runs": 9, "epochs": T}], default="none")
    assert "promotion ASHA (Syne Tune)" in md.splitlines()[0]
    assert f"{asha['epochs_frac'][0]:.2f}, kept 100 %, 0.00 ± 0.00 pp, best done at" in md


def test_an_unknown_peer_is_one_line():
    with pytest.raises(EpochgraphError, match="bench.draws.peers.ray_asha: unknown peer"):
        draws.score_peer("ray_asha", {}, _flat(3), [np.arange(3)])
