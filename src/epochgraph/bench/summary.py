"""The benchmark's summary: every target measured against what the step results say."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from epochgraph.bench.pruning import headline, pruning_targets, replay_plot
from epochgraph.bench.timing import machine


def _best(g: pd.DataFrame, mask: pd.Series) -> tuple[float, str]:
    """The highest balanced accuracy among ``g[mask]`` and its cell name."""
    sub = g[mask]
    if sub.empty:
        return math.nan, "-"
    r = sub.loc[sub["bal_acc_mean"].idxmax()]
    return float(r["bal_acc_mean"]), f"{r['classifier']} {r['features']}"


def forecast_targets(comparison: pd.DataFrame, max_t: int = 3) -> list[dict[str, Any]]:
    """Per t <= ``max_t``: the best graph signature, learning curve and hybrid cells (5-fold CV)."""
    rows = []
    scored = comparison.dropna(subset=["bal_acc_mean"])
    for t in range(1, max_t + 1):
        g = scored[scored["t"] == t]
        if g.empty:
            continue

        sig, curve, hybrid = (_best(g, g["features"].str.startswith("signature")), _best(g, g["features"] == "curve"),
                              _best(g, g["features"].str.startswith("hybrid")))
        rows.append({"t": t, "signature": sig[0], "signature_cell": sig[1], "curve": curve[0],
                     "curve_cell": curve[1], "hybrid": hybrid[0], "hybrid_cell": hybrid[1]})
    return rows


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def summary(b: Mapping[str, Any], command: str) -> str:
    """summary.md: every target of the benchmark, measured, per population."""
    results = Path(b["results"])
    lines = ["# Pruning benchmark: summary", "",
             f"Reproduce: `{command}` (machine: {machine()}).", "",
             "## Forecast (cross-validated balanced accuracy on held-out trainings, from epochgraph-compare)", "",
             "Target: >= 0.95 at some t <= 3, and above the learning-curve baseline at that t.", "",
             "| population | t | best graph signature | learning curve | hybrid signature ⊕ curve | target |",
             "|---|---|---|---|---|---|"]
    for preset in b["populations"]:
        csv = results / "compare" / preset / "comparison.csv"
        if not csv.is_file():
            lines.append(f"| {preset} | - | (no comparison: run bench.steps=[compare]) | | | |")
            continue
        for r in forecast_targets(pd.read_csv(csv)):
            ok = r["signature"] >= 0.95 and r["signature"] > r["curve"]
            lines.append(f"| {preset} | {r['t']} | {r['signature']:.3f} ({r['signature_cell']}) | "
                         f"{r['curve']:.3f} ({r['curve_cell']}) | {r['hybrid']:.3f} ({r['hybrid_cell']}) | "
                         f"{_met(ok)} |")
    replays = [json.loads((results / "replay" / f"{p}.json").read_text()) for p in b["populations"]
               if (results / "replay" / f"{p}.json").is_file()]
    if replays:
        head, _ = headline(replays, float(b["replay"]["keep_share"]))
        (results / "replay" / "headline.md").write_text(head)
        lines += ["", "## Pruning: the headline", "", head, "![Pareto plot](replay/epochs_vs_regret.png)"]
        replay_plot(replays, results / "replay" / "epochs_vs_regret.png")
    lines += ["", "## Pruning: each family's cheapest setting at zero regret", "",
              "Per family of ours, the setting that saves the most epochs with zero regret in every order (else the "
              "lowest regret), against the Optuna pruner saving the most at no more mean regret (chosen in "
              "hindsight, on the population scored).", "",
              "| population | setting | epochs saved | regret (orders at zero) | false-prune rate "
              "| high trials pruned | best Optuna at ≤ regret | its saving | ratio of savings |",
              "|---|---|---|---|---|---|---|---|---|"]
    for preset in b["populations"]:
        path = results / "replay" / f"{preset}.json"
        if not path.is_file():
            lines.append(f"| {preset} | (no replay: run bench.steps=[replay]) |" + " |" * 7)
            continue
        res = json.loads(path.read_text())
        for kind in ("forecast", "signature", "hybrid"):
            p = pruning_targets(res, kind)
            if p:
                lines.append(f"| {preset} | {p['signature']} | {p['signature_saving']:.2f} | "
                             f"{p['signature_regret']:.4f} ({p['signature_zero_regret_share']:.2f}) | "
                             f"{p['false_prune']:.2f} | {p['high_pruned']:.2f} | {p['optuna'] or '-'} | "
                             f"{p['optuna_saving']:.2f} | {p['ratio']:.2f} |")
    lines += ["", "Details: [forecast ranking](forecast.md), [the paper's protocol](paper/paper.md), "
              "[predictor tables](compare/), [replay](replay/replay.md) and "
              "[plot](replay/epochs_vs_regret.png), [time efficiency](time_efficiency.md) "
              "([plot](time_efficiency.png)).", ""]
    text = "\n".join(lines)
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.md").write_text(text)
    print(text)
    return text
