"""The pruning benchmark: every population replayed through our pruners and a grid of Optuna's, the
headline against Optuna's settings (defaults, chosen on the other populations, cheapest in hindsight),
and the plot of epochs trained against regret."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from epochgraph.forecast.records import RunRecord
from epochgraph.search.replay import PrunerFactory, pruner_factory, random_orders, replay_orders, run_length

KINDS = ("signature", "hybrid", "curve")  # the SignaturePruner's feature sources, as setting-name prefixes


def setting_kind(name: str) -> str:
    if name.startswith("forecast"):
        return "forecast"
    if name.startswith("top"):
        return "one-epoch"
    return next((k for k in KINDS if name.startswith(k)), "optuna")


def replay_settings(b: Mapping[str, Any], n_epochs: int, preset: str) -> dict[str, PrunerFactory]:
    """name -> pruner factory for scoring ``preset``: ours (warm-started from the other populations' tables,
    never from ``preset``), the paper's classifier, then Optuna's grid, as bench.replay lists them."""
    r = b["replay"]
    out: dict[str, PrunerFactory] = {}
    warm = {"warm_start": [str(b["tables"])], "warm_exclude": [preset]}
    for name, changes in (r.get("forecast") or {}).items():
        out[name] = pruner_factory("forecast", n_epochs, {**warm, **(changes or {})})
    sig = r.get("signature") or {}
    for clf in sig.get("classifiers", []):
        for label, cents in sig["centralities"].items():
            out[f"signature-{clf}-{label}"] = pruner_factory(
                "signature", n_epochs, {**sig["base"], "classifier": clf, "centralities": list(cents)})
    for name, changes in (sig.get("extra") or {}).items():
        out[name if name.startswith(KINDS) else f"signature-{name}"] = pruner_factory(
            "signature", n_epochs, {**sig["base"], **changes})
    for name, changes in (r.get("optuna") or {}).items():
        changes = dict(changes or {})
        out[name] = pruner_factory(changes.pop("pruner", name), n_epochs, changes)
    return out


def replay_population(b: Mapping[str, Any], preset: str, runs: Sequence[RunRecord]) -> dict[str, Any]:
    """Every pruner setting over ``replay.orders`` random orders of ``runs``, the population's trials."""
    import optuna
    from tqdm import tqdm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n_epochs = max(run_length(r) for r in runs)
    orders = random_orders(len(runs), int(b["replay"]["orders"]))
    q = float(b["replay"]["high_quantile"])
    table: dict[str, Any] = {}
    factories = replay_settings(b, n_epochs, preset)
    for name, factory in tqdm(factories.items(), desc=f"replaying {preset}", unit="pruner", file=sys.stderr):
        res = replay_orders(runs, factory, orders, q, n_jobs=int(b["workers"]))
        res["regret_per_order"] = [o["regret"] for o in res.pop("per_order")]
        table[name] = res
        tqdm.write(f"[bench] {preset} {name:34s} epochs {res['epochs_frac'][0]:.2f}  regret {res['regret'][0]:.4f}"
                   f"  zero-regret orders {res['zero_regret_share']:.2f}  pruner {res['pruner_s'][0]:.2f}s",
                   file=sys.stderr)
    finals = [r.final_acc for r in runs]
    epoch_s = [v for r in runs for v in r.history.get("time/epoch_s", []) if v is not None and math.isfinite(v)]
    return {"population": preset, "runs": len(runs), "epochs": n_epochs, "orders": len(orders),
            "high_quantile": q, "high_cut": float(np.quantile(np.nan_to_num(finals), q)),
            "epoch_s": float(np.median(epoch_s)) if epoch_s else math.nan,
            "total_epochs": int(sum(run_length(r) for r in runs)),
            "final_acc_range": [float(np.nanmin(finals)), float(np.nanmax(finals))], "pruners": table}


def replay_markdown(res: Mapping[str, Any]) -> str:
    lo, hi = res["final_acc_range"]
    lines = [f"### `{res['population']}`: {res['runs']} recorded trainings of up to {res['epochs']} epochs",
             "",
             f"Final val_acc {lo:.3f}–{hi:.3f}; high = at or above the {res['high_quantile']:.2f} quantile "
             f"({res['high_cut']:.3f}). {res['orders']} random orders, mean ± std over orders.", "",
             "| pruner | epochs trained | regret | orders with zero regret | false-prune rate | high trials pruned "
             "| pruned trials | pruner time (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, a in sorted(res["pruners"].items(), key=lambda kv: kv[1]["epochs_frac"][0]):
        lines.append(f"| {name} | {a['epochs_frac'][0]:.3f} ± {a['epochs_frac'][1]:.3f} | {a['regret'][0]:.4f} ± "
                     f"{a['regret'][1]:.4f} | {a['zero_regret_share']:.2f} | {a['false_prune'][0]:.3f} | "
                     f"{a['high_pruned'][0]:.3f} | {a['pruned'][0]:.1f} | {a['pruner_s'][0]:.2f} |")
    return "\n".join(lines) + "\n"


def replay_plot(results: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """The Pareto plot: epochs trained vs. regret, one point per pruner setting, one panel per population;
    the line joins the settings no other beats on both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"forecast": "tab:red", "signature": "tab:blue", "hybrid": "tab:purple", "curve": "tab:green",
              "optuna": "tab:orange", "one-epoch": "tab:gray"}
    cols = min(3, len(results))
    rows = math.ceil(len(results) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.8 * rows), squeeze=False)
    for ax, res in zip(axes.flat, results):
        pts = sorted((a["epochs_frac"][0], a["regret"][0]) for a in res["pruners"].values())
        front, best = [], math.inf
        for x, y in pts:
            if y < best - 1e-12:
                front.append((x, y))
                best = y
        ax.step(*zip(*front), where="post", color="black", lw=0.8, alpha=0.5, label="Pareto front")
        for name, a in res["pruners"].items():
            kind = setting_kind(name)
            # mean over orders; the spread of epochs trained as a bar (the regret's spread is in the table)
            ax.errorbar(a["epochs_frac"][0], a["regret"][0], xerr=a["epochs_frac"][1], fmt="o",
                        color=colors[kind], capsize=2, ms=6 if name == "forecast" else 4, alpha=0.85,
                        mec="black" if name == "forecast" else None)
            if kind in ("forecast", "one-epoch") or name in ("median", "successive_halving", "wilcoxon"):
                ax.annotate(name, (a["epochs_frac"][0], a["regret"][0]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xlabel("fraction of epochs trained (lower = more saved)")
        ax.set_ylabel("regret (best final val_acc missed), mean")
        ax.set_ylim(bottom=-0.05 * max(0.001, max(a["regret"][0] for a in res["pruners"].values())))
        ax.set_xlim(0, 1.05)
        ax.set_title(f"{res['population']} ({res['runs']} runs, {res['orders']} orders)", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=k) for k, c in colors.items()]
    axes.flat[0].legend(handles=handles, fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cheapest(pruners: Mapping[str, Any], names: Sequence[str], keep: float) -> str | None:
    """The setting among ``names`` training the fewest epochs while keeping the best trial (zero regret) in
    at least ``keep`` of the orders."""
    ok = [n for n in names if pruners[n]["zero_regret_share"] >= keep - 1e-9]
    return min(ok, key=lambda n: pruners[n]["epochs_frac"][0]) if ok else None


def choose_lopo(results: Sequence[Mapping[str, Any]], preset: str, keep: float, kind: str = "forecast") -> str | None:
    """The setting of ``kind`` for ``preset`` chosen on the OTHER populations only: the cheapest (mean epochs
    trained) among those keeping the best trial in >= ``keep`` of the orders on every other population
    (else the one keeping it most often on its worst other population)."""
    others = [r for r in results if r["population"] != preset]
    names = [n for n in results[0]["pruners"] if setting_kind(n) == kind and n != "none"
             and all(n in r["pruners"] for r in results)]
    if not others or not names:
        return None
    ok = [n for n in names if all(r["pruners"][n]["zero_regret_share"] >= keep - 1e-9 for r in others)]
    pool = ok or [max(names, key=lambda n: min(r["pruners"][n]["zero_regret_share"] for r in others))]
    return min(pool, key=lambda n: float(np.mean([r["pruners"][n]["epochs_frac"][0] for r in others])))


def headline(results: Sequence[Mapping[str, Any]], keep: float) -> tuple[str, list[dict[str, Any]]]:
    """Per population: our default and our leave-one-population-out choice against the cheapest Optuna
    setting (and the cheapest one-epoch baseline) that keeps the best trial in >= ``keep`` of the orders."""
    rows = []
    for res in results:
        pr = res["pruners"]
        opt = _cheapest(pr, [n for n in pr if setting_kind(n) == "optuna" and n != "none"], keep)
        one = _cheapest(pr, [n for n in pr if setting_kind(n) == "one-epoch"], keep)
        chosen = choose_lopo(results, res["population"], keep, "forecast")
        opt_lopo = choose_lopo(results, res["population"], keep, "optuna")
        row = {"population": res["population"], "runs": res["runs"], "optuna": opt, "one_epoch": one,
               "chosen": chosen, "optuna_lopo": opt_lopo}
        for key, name in (("default", "forecast"), ("chosen", chosen)):
            if name in pr:
                a = pr[name]
                saved = (1 - a["epochs_frac"][0]) * res["total_epochs"] * res["epoch_s"]
                row[key + "_epochs"], row[key + "_keep"] = a["epochs_frac"][0], a["zero_regret_share"]
                row[key + "_regret"] = a["regret"][0]
                row[key + "_pruner_pct"] = 100 * a["pruner_s"][0] / saved if saved > 0 else math.nan
        for key, name in (("optuna", opt), ("one_epoch", one), ("sh", "successive_halving"), ("median", "median"),
                          ("optuna_lopo", opt_lopo)):
            if name in pr:
                row[key + "_epochs"], row[key + "_regret"] = pr[name]["epochs_frac"][0], pr[name]["regret"][0]
                row[key + "_keep"] = pr[name]["zero_regret_share"]
        if "default_epochs" in row and opt:
            row["ratio"] = row["default_epochs"] / row["optuna_epochs"]
        rows.append(row)

    def cell(r: Mapping[str, Any], key: str, name: str | None = None) -> str:
        if key + "_epochs" not in r:
            return "-"
        label = f"{name}: " if name else ""
        return f"{label}{r[key + '_epochs']:.3f} ({r[key + '_keep'] * 20:.0f}/20, regret {r[key + '_regret']:.4f})"

    lines = [f"Epochs trained (fraction of the population's epochs, mean over orders), orders keeping the best "
             f"trial (scaled to 20), mean regret. \"Cheapest\" = fewest epochs among the settings keeping the "
             f"best trial in >= {keep:.0%} of the orders. Ours is warm-started from the other populations only.",
             "", "| population | ours: `pruner=forecast` (default) | ours, chosen on the other populations "
             "| cheapest Optuna setting (in hindsight) | ratio (target <= 0.8) | Optuna setting chosen on the other "
             "populations | Optuna SuccessiveHalving (default) | Optuna Median (default) "
             "| cheapest one-epoch top-k | pruner time / training time saved |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        lines.append(f"| {r['population']} ({r['runs']}) | {cell(r, 'default')} | {cell(r, 'chosen', r['chosen'])} "
                     f"| {cell(r, 'optuna', r['optuna'])} | {ratio} | {cell(r, 'optuna_lopo', r['optuna_lopo'])} "
                     f"| {cell(r, 'sh')} | {cell(r, 'median')} "
                     f"| {cell(r, 'one_epoch', r['one_epoch'])} | "
                     f"{r.get('default_pruner_pct', math.nan):.2f} % |")
    return "\n".join(lines) + "\n", rows


def replay_all(b: Mapping[str, Any]) -> list[dict[str, Any]]:
    out_dir = Path(b["results"]) / "replay"
    out_dir.mkdir(parents=True, exist_ok=True)
    from epochgraph.forecast.population import from_table, read_table

    table = read_table(b["tables"])
    results = []
    for preset in b["populations"]:
        res = replay_population(b, preset, from_table(table, [preset]))
        (out_dir / f"{preset}.json").write_text(json.dumps(res, indent=2))
        results.append(res)
    head, _ = headline(results, float(b["replay"]["keep_share"]))
    md = ("# Pruner replay\n\n## Headline\n\n" + head + "\n![Pareto plot](epochs_vs_regret.png)\n\n"
          + "\n".join(replay_markdown(r) for r in results))
    (out_dir / "replay.md").write_text(md)
    (out_dir / "headline.md").write_text(head)
    replay_plot(results, out_dir / "epochs_vs_regret.png")
    print(md)
    return results


def pruning_targets(res: Mapping[str, Any], kind: str = "signature") -> dict[str, Any]:
    """The ``kind`` setting (signature, hybrid, curve) saving most epochs at zero regret (in every order;
    else the lowest regret), against the Optuna pruner saving most at no more regret."""
    pr = res["pruners"]
    sig = {k: v for k, v in pr.items() if setting_kind(k) == kind}
    opt = {k: v for k, v in pr.items() if setting_kind(k) == "optuna" and k != "none"}
    if not sig:
        return {}
    zero = {k: v for k, v in sig.items() if v["zero_regret_share"] == 1.0}
    pool = zero or {k: v for k, v in sig.items() if v["regret"][0] == min(a["regret"][0] for a in sig.values())}
    s_name = max(pool, key=lambda k: 1 - pool[k]["epochs_frac"][0])
    s = pool[s_name]
    peers = {k: v for k, v in opt.items() if v["regret"][0] <= s["regret"][0] + 1e-12}
    o_name = max(peers, key=lambda k: 1 - peers[k]["epochs_frac"][0]) if peers else None
    o_saving = 1 - peers[o_name]["epochs_frac"][0] if o_name else 0.0
    s_saving = 1 - s["epochs_frac"][0]
    best_opt = max(opt, key=lambda k: 1 - opt[k]["epochs_frac"][0]) if opt else None
    careful = min(pool, key=lambda k: (pool[k]["false_prune"][0], pool[k]["epochs_frac"][0]))
    return {"signature": s_name, "signature_saving": s_saving, "signature_regret": s["regret"][0],
            "signature_zero_regret_share": s["zero_regret_share"], "false_prune": s["false_prune"][0],
            "high_pruned": s["high_pruned"][0], "optuna": o_name, "optuna_saving": o_saving,
            "ratio": s_saving / o_saving if o_saving > 0 else math.inf,
            "optuna_most_saving": best_opt,
            "optuna_most_saving_value": 1 - opt[best_opt]["epochs_frac"][0] if best_opt else math.nan,
            "optuna_most_saving_regret": opt[best_opt]["regret"][0] if best_opt else math.nan,
            "fewest_false_prunes": careful, "fewest_false_prunes_rate": pool[careful]["false_prune"][0],
            "fewest_false_prunes_saving": 1 - pool[careful]["epochs_frac"][0]}
