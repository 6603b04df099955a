"""Does the graph signature see what the curve cannot? Before a learning-rate drop the curve is flat and ranks
little while the weights keep moving: the forecast from the curve alone against the hybrid one (curve and
signature) at the epochs before the first drop, on the populations trained with a schedule.

For each schedule population, the forecaster is fitted as the pruner fits it: on the other populations that
carry signatures (leave one population out; the warm pairs a random subset of ``warm_rows``), plus 4/5 of
the population's own trainings (5 folds, ``shuffles`` shuffles for the spread); each forecasts the final
val_acc of the held-out fifth from epochs 1..t. The score is Spearman's ρ between the forecast median and the
true final val_acc, per t, beside val_acc at t itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epochgraph.paths import CONF_DIR
from epochgraph.search.replay import run_length

SOURCES = ("curve", "hybrid")


def _first_drop(runs, n_epochs: int) -> int:
    """The last epoch before the LR first falls below half its first value (the whole run if it never does)."""
    for run in runs:
        lrs = [v for v in (run.history.get("lr") or []) if v is not None]
        if len(lrs) >= 2 and lrs[0] > 0:
            below = [i for i, v in enumerate(lrs) if v < 0.5 * lrs[0]]
            if below:
                return max(1, below[0])
    return n_epochs - 1


def hybrid_scores(b: Mapping[str, Any]) -> pd.DataFrame:
    """ρ(forecast, final) per schedule population, source and t before the first drop (module docstring)."""
    from omegaconf import OmegaConf
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold
    from threadpoolctl import threadpool_limits

    from epochgraph.forecast.forecaster import FinalAccuracyForecaster, training_pairs
    from epochgraph.forecast.population import from_table, read_table

    conf = OmegaConf.load(Path(CONF_DIR) / "pruner" / "forecast.yaml")
    h = b["hybrid"]
    params = {"levels": (0.5, 1 - float(conf.delta)), "max_iter": 30, "max_leaf_nodes": 10}
    table = read_table(b["tables"])
    with_sig = sorted(p for p in table["experiment"].unique()
                      if table.loc[table["experiment"] == p, "sig/degree/mean"].notna().any())
    pops = {p: from_table(table, [p]) for p in with_sig}
    rows = []
    for preset in h["populations"]:
        runs = pops[preset]
        n_epochs = max(run_length(r) for r in runs)
        drop = _first_drop(runs, n_epochs)
        ts = list(range(1, drop + 1))
        warm = [r.history for p, rs in pops.items() if p != preset for r in rs]
        hs, finals = [r.history for r in runs], np.nan_to_num([r.final_acc for r in runs])
        for source in SOURCES:
            rng = np.random.default_rng(int(h["seed"]))
            Xw, yw, _ = training_pairs(warm, source, n_epochs)
            if len(yw) > int(conf.warm_rows):
                pick = rng.choice(len(yw), int(conf.warm_rows), replace=False)
                Xw, yw = Xw[pick], yw[pick]
            for shuffle in range(int(h["shuffles"])):
                preds: dict[int, list[tuple[int, float]]] = {t: [] for t in ts}
                folds = KFold(5, shuffle=True, random_state=int(h["seed"]) + shuffle).split(hs)
                for train, test in folds:
                    Xo, yo, _ = training_pairs([hs[i] for i in train], source, n_epochs)
                    reps = max(1, round(float(conf.own_weight)))
                    X = np.vstack([Xw, np.repeat(Xo, reps, axis=0)])
                    y = np.concatenate([yw, np.repeat(yo, reps)])
                    with threadpool_limits(1, user_api="openmp"):
                        model = FinalAccuracyForecaster(source=source, method=conf.method, **params).fit(X, y)
                        median = int(np.argmin(np.abs(model.levels_ - 0.5)))
                        for t in ts:
                            keep = [i for i in test if run_length(runs[i]) >= t]
                            if keep:
                                _, q = model.forecast([hs[i] for i in keep], t, n_epochs)
                                preds[t] += list(zip(keep, q[:, median]))
                for t, pairs in preds.items():
                    idx = [i for i, _ in pairs]
                    rho = spearmanr([f for _, f in pairs], finals[idx]).statistic
                    now = [np.nan_to_num(hs[i]["val_acc"][t - 1]) for i in idx]
                    rows.append({"population": preset, "t": t, "drop_after": drop, "source": source,
                                 "shuffle": shuffle, "forecast ρ": float(np.nan_to_num(rho)),
                                 "val_acc ρ": float(np.nan_to_num(spearmanr(now, finals[idx]).statistic)),
                                 "runs": len(idx)})
        print(f"[bench] hybrid: {preset} ({len(runs)} runs, first drop after epoch {drop}) done", flush=True)
    out = pd.DataFrame(rows)
    _write(out, b)
    return out


def _write(out: pd.DataFrame, b: Mapping[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = Path(b["results"]) / "hybrid"
    res.mkdir(parents=True, exist_ok=True)
    out.to_csv(res / "hybrid.csv", index=False)
    g = out.groupby(["population", "t", "source"])["forecast ρ"]
    table = g.mean().unstack("source")
    spread = g.std().unstack("source")
    base = out.groupby(["population", "t"])["val_acc ρ"].mean()
    table["hybrid - curve"] = table["hybrid"] - table["curve"]
    table["val_acc ρ"] = base
    table = table.reset_index()
    for col in SOURCES:
        table[f"{col} sd"] = spread[col].to_numpy()
    summary = (table.groupby("population")[["curve", "hybrid", "hybrid - curve"]].mean()
               .rename(columns=lambda c: f"mean over t: {c}"))
    better = table.groupby("population").apply(lambda d: int((d["hybrid - curve"] > 0).sum()), include_groups=False)
    summary["t where hybrid > curve"] = better
    summary["epochs before the drop"] = table.groupby("population")["t"].max()
    md = ["# The graph signature before the first LR drop: hybrid vs. curve-only forecast", "",
          "Spearman ρ between the forecast final val_acc (median) and the true final val_acc, at each epoch t",
          "before the first learning-rate drop. Fitted on the other populations with signatures plus 4/5 of the",
          "population's own trainings (5-fold, mean and sd over shuffles of the folds); `val_acc ρ` ranks by",
          "val_acc at t itself. Generated by `make bench ARGS=\"bench.steps=[hybrid]\"`.", "",
          "## Per population", "", summary.reset_index().to_markdown(index=False, floatfmt=".3f"), "",
          "## Per epoch", "", table.to_markdown(index=False, floatfmt=".3f"), ""]
    (res / "hybrid.md").write_text("\n".join(md))
    pops = list(table["population"].unique())
    fig, axes = plt.subplots(1, len(pops), figsize=(6 * len(pops), 4), squeeze=False)
    for ax, pop in zip(axes[0], pops):
        d = table[table["population"] == pop]
        for col, colour in (("curve", "tab:blue"), ("hybrid", "tab:orange")):
            ax.errorbar(d["t"], d[col], yerr=d[f"{col} sd"], label=f"forecast, {col}", color=colour, capsize=2)
        ax.plot(d["t"], d["val_acc ρ"], "--", color="grey", label="val_acc at t")
        ax.set(title=f"{pop} (before the first drop)", xlabel="epoch t", ylabel="Spearman ρ with final val_acc")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(res / "hybrid.png", dpi=120)
    plt.close(fig)
    print("\n".join(md[:12]))
