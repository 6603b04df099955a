"""How well the final-accuracy forecaster ranks each population, fitted on the others."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epochgraph.paths import CONF_DIR
from epochgraph.search.replay import run_length


def forecast_scores(b: Mapping[str, Any]) -> pd.DataFrame:
    """Spearman ρ of the forecast final val_acc and of val_acc at t with the true final val_acc, per
    population: (a) the forecaster fitted on the other populations only; (b) the same plus the population's
    own trainings from 4 of 5 folds (scored on the fifth), as the pruner is once a study has run a while."""
    from omegaconf import OmegaConf
    from sklearn.model_selection import KFold
    from threadpoolctl import threadpool_limits

    from epochgraph.forecast.forecaster import FinalAccuracyForecaster, spearman_at, training_pairs
    from epochgraph.forecast.population import from_table, read_table

    conf = OmegaConf.load(Path(CONF_DIR) / "pruner" / "forecast.yaml")
    source, method, own_weight = conf.source, conf.method, float(conf.own_weight)
    # the pruner's own forecaster (`ForecastPruner._template`): the median and its upper quantile
    params = {"levels": (0.5, 1 - float(conf.delta)), "max_iter": 30, "max_leaf_nodes": 10}
    rng = np.random.default_rng(0)
    table = read_table(b["tables"])
    pops = {p: from_table(table, [p]) for p in b["populations"]}
    rows = []
    for preset, runs in pops.items():
        n_epochs = max(run_length(r) for r in runs)
        warm = [r.history for p, rs in pops.items() if p != preset for r in rs]
        Xw, yw, _ = training_pairs(warm, source, n_epochs)
        if len(yw) > int(conf.warm_rows):  # as the pruner: a random subset of the warm pairs
            pick = rng.choice(len(yw), int(conf.warm_rows), replace=False)
            Xw, yw = Xw[pick], yw[pick]
        hs, finals = [r.history for r in runs], [r.final_acc for r in runs]
        with threadpool_limits(1, user_api="openmp"):
            lopo = FinalAccuracyForecaster(source=source, method=method, **params).fit(Xw, yw)
            for t in (1, 2, 3):
                rho_f, rho_c = spearman_at(hs, finals, lopo, t, n_epochs)
                rows.append({"population": preset, "t": t, "fit on": "other populations",
                             "forecast ρ": rho_f, "val_acc ρ": rho_c})
            preds: dict[int, list[tuple[float, float]]] = {1: [], 2: [], 3: []}
            for train, test in KFold(5, shuffle=True, random_state=0).split(hs):
                Xo, yo, _ = training_pairs([hs[i] for i in train], source, n_epochs)
                reps = max(1, round(own_weight))  # as the pruner weighs its own trials: repeated rows
                X, y = np.vstack([Xw, np.repeat(Xo, reps, axis=0)]), np.concatenate([yw, np.repeat(yo, reps)])
                model = FinalAccuracyForecaster(source=source, method=method, **params).fit(X, y)
                for t in preds:
                    keep = [i for i in test if run_length(runs[i]) >= t]
                    if keep:
                        _, q = model.forecast([hs[i] for i in keep], t, n_epochs)
                        preds[t] += list(zip(q[:, int(np.argmin(np.abs(model.levels_ - 0.5)))],
                                             [finals[i] for i in keep]))
        from scipy.stats import spearmanr

        for t, pairs in preds.items():
            f, y = np.array([p[0] for p in pairs]), np.nan_to_num([p[1] for p in pairs])
            now = [run.history["val_acc"][t - 1] for run in runs if run_length(run) >= t]
            rows.append({"population": preset, "t": t, "fit on": "other populations + 4/5 of its own (5-fold)",
                         "forecast ρ": float(spearmanr(f, y).statistic),
                         "val_acc ρ": float(spearmanr(np.nan_to_num(now), np.nan_to_num(
                             [run.final_acc for run in runs if run_length(run) >= t])).statistic)})
    out = pd.DataFrame(rows)
    md = ["# Forecast of the final val_acc (Spearman ρ with the true final val_acc)", "",
          f"Forecaster: conf/pruner/forecast.yaml (source {source}, method {method}). Target: forecast ρ above "
          "val_acc's ρ at t = 2 on every population.", "", out.to_markdown(index=False, floatfmt=".3f"), ""]
    Path(b["results"]).mkdir(parents=True, exist_ok=True)
    (Path(b["results"]) / "forecast.md").write_text("\n".join(md))
    print("\n".join(md))
    return out
