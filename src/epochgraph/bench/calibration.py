"""Is P(final >= best so far) a probability? Brier score and reliability on populations it was not fitted on.

Each population is replayed in drawn studies through the forecast pruner warm-started from the *other*
tables, observing only: the pruner forecasts at every epoch of every trial once an incumbent exists, and no
trial is stopped, so every forecast meets its outcome (the trial's recorded final val_acc >= the best
completed value at the time). The shipped probability (the predictive distribution through the forecast
quantiles, `FinalAccuracyForecaster.prob_gain_at_least`, recalibrated on the other populations,
`epochgraph.forecast.recalibration`) is set against the distribution before recalibration and the rule
before that: two quantiles (0.5 and 1 - delta) read as a step (P is 1 - 0.5/2, 1 - CDF between them, or
delta/2 above).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from epochgraph.bench.draws import draw_studies
from epochgraph.forecast.forecaster import FinalAccuracyForecaster
from epochgraph.forecast.records import RunRecord
from epochgraph.search.replay import _epoch_attrs, pruner_factory, reported_keys, run_length
from epochgraph.search.trial_attrs import EPOCH_ATTR, store_attr
from epochgraph.store import optuna_internals

RULES = ("recalibrated", "distribution", "two-quantile step")
COLORS = ("tab:red", "tab:orange", "tab:grey")


def _step_probability(self: FinalAccuracyForecaster, X, gains, quantiles=None) -> np.ndarray:
    """The rule before: P(gain >= g) from the quantiles, linear between levels, half a tail's mass beyond."""
    q = self.predict_quantiles(X) if quantiles is None else quantiles
    levels = np.asarray(self.levels_)
    out = np.empty(len(q))
    for i, (row, g) in enumerate(zip(q, np.asarray(gains, dtype=float))):
        if g < row[0]:
            out[i] = 1.0 - levels[0] / 2
        elif g > row[-1]:
            out[i] = (1.0 - levels[-1]) / 2
        else:
            out[i] = 1.0 - (float(np.interp(g, row, levels)) if row[-1] > row[0] else levels[-1])
    return out


def observe(runs: Sequence[RunRecord], pruner) -> list[tuple[float, int, float]]:
    """(P(final >= best), outcome, progress t/T) of every forecast of a study replayed without pruning."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(direction="maximize")
    out = []
    for run in runs:
        trial = study.ask()
        length = run_length(run)
        keys = reported_keys(run)
        for e in range(length):
            store_attr(trial, EPOCH_ATTR.format(e + 1), _epoch_attrs(run, e, keys))
            value = run.history["val_acc"][e]
            trial.report(float(value) if value is not None and math.isfinite(value) else 0.0, e + 1)
            frozen = optuna_internals.frozen_trial(study, trial)  # what the pruner would be handed
            best = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
            p = pruner.prob_beat_best(study, frozen) if best else None
            if p is not None and math.isfinite(run.final_acc):
                out.append((float(p), int(run.final_acc >= max(best)), (e + 1) / length))
        study.tell(trial, run.final_acc if math.isfinite(run.final_acc) else 0.0)
    return out


def calibration_population(b: Mapping[str, Any], preset: str, runs: Sequence[RunRecord]) -> dict[str, Any]:
    from sklearn.metrics import brier_score_loss

    c = b["calibration"]
    n_epochs = max(run_length(r) for r in runs)
    draws = draw_studies(len(runs), int(c["study_size"]), int(c["draws"]), int(c.get("seed", 1)))
    warm = {"warm_start": [str(b["tables"])], "warm_exclude": [preset], "base": None}
    out: dict[str, Any] = {"population": preset}
    original = FinalAccuracyForecaster.prob_gain_at_least
    for rule in RULES:
        changes = {**warm, "recalibrate": rule == "recalibrated"}
        if rule == "two-quantile step":
            changes["forecaster_params"] = {"levels": [0.5, 0.95]}
            FinalAccuracyForecaster.prob_gain_at_least = _step_probability
        try:
            factory = pruner_factory("forecast", n_epochs, changes)
            points = [pt for d in draws for pt in observe([runs[i] for i in d], factory())]
        finally:
            FinalAccuracyForecaster.prob_gain_at_least = original
        p = np.array([x[0] for x in points])
        y = np.array([x[1] for x in points])
        out[rule] = {"n": len(points), "brier": float(brier_score_loss(y, p)) if len(y) else math.nan,
                     "base_rate": float(y.mean()) if len(y) else math.nan,
                     "distinct_values": int(len(np.unique(np.round(p, 4)))), "p": p.tolist(), "y": y.tolist()}
    return out


def plot(results: Sequence[Mapping[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    fig, axes = plt.subplots(1, len(results) + 1, figsize=(4.4 * (len(results) + 1), 4.2), squeeze=False)
    pooled = {rule: ([], []) for rule in RULES}
    for ax, res in zip(axes.flat, results):
        for rule, color in zip(RULES, COLORS):
            r = res[rule]
            pooled[rule][0].extend(r["p"])
            pooled[rule][1].extend(r["y"])
            if len(set(r["y"])) > 1:
                frac, mean = calibration_curve(r["y"], r["p"], n_bins=8, strategy="quantile")
                ax.plot(mean, frac, "o-", color=color, label=f"{rule}: Brier {r['brier']:.3f}")
        ax.plot([0, 1], [0, 1], "k--", lw=0.7)
        ax.set_title(res["population"], fontsize=9)
        ax.set_xlabel("P(final ≥ best so far), forecast")
        ax.set_ylabel("share that ended ≥ best")
        ax.legend(fontsize=7)
    ax = axes.flat[len(results)]
    from sklearn.metrics import brier_score_loss

    for rule, color in zip(RULES, COLORS):
        p, y = np.array(pooled[rule][0]), np.array(pooled[rule][1])
        if len(set(y)) > 1:
            frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
            ax.plot(mean, frac, "o-", color=color, label=f"{rule}: Brier {brier_score_loss(y, p):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.7)
    ax.set_title("all populations pooled", fontsize=9)
    ax.set_xlabel("P(final ≥ best so far), forecast")
    ax.legend(fontsize=7)
    fig.suptitle("Reliability of the forecast pruner's probability on populations it was not fitted on")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def calibration_all(b: Mapping[str, Any]) -> list[dict[str, Any]]:
    from epochgraph.forecast.population import from_table, read_table

    out_dir = Path(b["results"]) / "calibration"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = read_table(b["tables"])
    results = [calibration_population(b, preset, from_table(table, [preset]))
               for preset in b["calibration"]["populations"]]
    rows = ["| population | forecasts | base rate | Brier: recalibrated (shipped) | Brier: distribution | "
            "Brier: two-quantile step | Brier: the base rate as a constant (hindsight) |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        new, dist, old = (r[rule] for rule in RULES)
        rows.append(f"| {r['population']} | {new['n']} | {new['base_rate']:.3f} | {new['brier']:.4f} | "
                    f"{dist['brier']:.4f} | {old['brier']:.4f} | "
                    f"{new['base_rate'] * (1 - new['base_rate']):.4f} |")
    md = ("# Calibration of P(final ≥ best so far)\n\n" + "\n".join(rows)
          + "\n\n![reliability](reliability.png)\n")
    (out_dir / "calibration.md").write_text(md)
    (out_dir / "calibration.json").write_text(json.dumps(
        [{k: ({kk: vv for kk, vv in v.items() if kk not in ("p", "y")} if isinstance(v, dict) else v)
          for k, v in r.items()} for r in results], indent=2))
    plot(results, out_dir / "reliability.png")
    print(md)
    return results
