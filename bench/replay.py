"""Pruner replay: recorded trainings replayed through each pruner in random orders (issue: evidence a
user reads before trusting the signature pruner).

Every recorded run of a population (MLflow experiment) becomes an Optuna trial in an in-memory study:
epoch by epoch its signature and learning curve are stored in the trial's user attrs and its val_acc
reported, exactly as a live job does; when the pruner says so the trial stops there. Per pruner and
order we measure the fraction of epochs trained, the regret (best final accuracy in the population minus
the best among trials that ran to the end), the false-prune rate (share of *high* runs, final accuracy at
or above the population median, that were pruned) and the time the pruner itself took.

    .venv/bin/python bench/replay.py --experiment population_lenet --orders 20
writes bench/results/replay_<experiment>.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from epochgraph import tracking
from epochgraph.compare import RunRecord, load_runs
from epochgraph.pruner import EPOCH_ATTR, SignaturePruner

OUT = Path(__file__).parent / "results"


def pruners(n_epochs: int) -> dict[str, callable]:
    """name -> factory of a fresh pruner (state must not leak between orders)."""
    out: dict[str, callable] = {"none": optuna.pruners.NopPruner}
    for clf in ("svm", "mlp", "xgboost"):
        for cents, label in ((("degree",), "degree"), (("eigenvector",), "eigenvector"),
                             (("degree", "eigenvector"), "both")):
            out[f"signature-{clf}-{label}"] = (
                lambda c=clf, ce=cents: SignaturePruner(bound=0.3, check_epochs=[2, 3], n_startup_trials=10,
                                                        min_per_class=3, classifier=c, centralities=ce,
                                                        refit_every=3))
    out["signature-mlp-hybrid"] = lambda: SignaturePruner(bound=0.3, check_epochs=[2, 3], n_startup_trials=10,
                                                          classifier="mlp", source="hybrid", refit_every=3)
    out["curve-mlp"] = lambda: SignaturePruner(bound=0.3, check_epochs=[2, 3], n_startup_trials=10,
                                               classifier="mlp", source="curve", refit_every=3)
    out["median"] = lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    out["percentile-25"] = lambda: optuna.pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=1)
    out["successive-halving"] = lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    out["hyperband"] = lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=n_epochs,
                                                              reduction_factor=3)
    out["patient-median"] = lambda: optuna.pruners.PatientPruner(
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1), patience=2)
    out["wilcoxon"] = lambda: optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    return out


def replay(runs: list[RunRecord], order: np.ndarray, pruner, n_epochs: int) -> dict[str, float]:
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(0))
    trained = budget = 0
    prune_time = 0.0
    completed, pruned = [], []
    for i in order:
        run = runs[i]
        h = run.history
        length = sum(1 for v in h["val_acc"] if v is not None and not math.isnan(v)) or 1
        budget += length
        trial = study.ask()
        stopped = False
        for e in range(length):
            attrs = {k: (None if v[e] is None or (isinstance(v[e], float) and math.isnan(v[e])) else v[e])
                     for k, v in h.items() if k.startswith("sig/") or k in ("val_acc", "val_loss", "train_acc",
                                                                             "train_loss")}
            trial.set_user_attr(EPOCH_ATTR.format(e + 1), attrs)
            trial.report(float(h["val_acc"][e]), e + 1)
            start = time.perf_counter()
            prune = trial.should_prune()
            prune_time += time.perf_counter() - start
            trained += 1
            if prune:
                study.tell(trial, state=TrialState.PRUNED)
                pruned.append(i)
                stopped = True
                break
        if not stopped:
            study.tell(trial, run.final_acc)
            completed.append(i)
    finals = np.array([r.final_acc for r in runs])
    high = finals >= np.median(finals)
    best_found = max((finals[i] for i in completed), default=0.0)
    return {"epochs_frac": trained / budget, "regret": float(finals.max() - best_found),
            "false_prune": float(sum(high[i] for i in pruned) / max(1, high.sum())),
            "pruned": len(pruned), "pruner_s": prune_time}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", default="population_lenet")
    ap.add_argument("--orders", type=int, default=20)
    ap.add_argument("--only", default=None, help="comma-separated pruner names")
    ap.add_argument("--tracking-uri", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    client = tracking.get_client(args.tracking_uri)
    runs = load_runs(client, args.experiment, epochs=100)
    n_epochs = max(sum(1 for v in r.history["val_acc"] if not math.isnan(v)) for r in runs)
    for r in runs:  # trim the padding of the 100-epoch window
        r.history = {k: v[:n_epochs] for k, v in r.history.items()}
    rng = np.random.default_rng(0)
    orders = [rng.permutation(len(runs)) for _ in range(args.orders)]
    table = {}
    for name, factory in pruners(n_epochs).items():
        if args.only and name not in args.only.split(","):
            continue
        res = [replay(runs, o, factory(), n_epochs) for o in orders]
        agg = {k: (statistics.mean(r[k] for r in res), statistics.pstdev(r[k] for r in res)) for k in res[0]}
        agg["zero_regret_share"] = (sum(r["regret"] == 0 for r in res) / len(res), 0.0)
        table[name] = agg
        print(f"{name:26s} epochs {agg['epochs_frac'][0]:.2f}  regret {agg['regret'][0]:.4f}  "
              f"false-prune {agg['false_prune'][0]:.2f}  pruner {agg['pruner_s'][0]:.2f}s", flush=True)
    write(args.experiment, runs, n_epochs, len(orders), table)


def write(experiment: str, runs, n_epochs: int, n_orders: int, table: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform()}
    (OUT / f"replay_{experiment}.json").write_text(json.dumps(
        {"experiment": experiment, "runs": len(runs), "epochs": n_epochs, "orders": n_orders, "machine": machine,
         "pruners": table}, indent=2))
    finals = [r.final_acc for r in runs]
    lines = [f"# Pruner replay on `{experiment}`", "",
             f"{len(runs)} recorded runs of up to {n_epochs} epochs "
             f"(final val_acc {min(finals):.3f}–{max(finals):.3f}), "
             f"replayed in {n_orders} random orders; mean ± std over orders. Machine: {machine['cpu_count']} cores. "
             "High = final val_acc at or above the population median.", "",
             "| pruner | epochs trained | regret | orders with zero regret | false-prune rate | pruned trials "
             "| pruner time (s) |", "|---|---|---|---|---|---|---|"]
    for name, a in sorted(table.items(), key=lambda kv: kv[1]["epochs_frac"][0]):
        lines.append(f"| {name} | {a['epochs_frac'][0]:.3f} ± {a['epochs_frac'][1]:.3f} | {a['regret'][0]:.4f} ± "
                     f"{a['regret'][1]:.4f} | {a['zero_regret_share'][0]:.2f} | {a['false_prune'][0]:.3f} | "
                     f"{a['pruned'][0]:.1f} | {a['pruner_s'][0]:.2f} |")
    (OUT / f"replay_{experiment}.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, a in table.items():
        color = "tab:blue" if name.startswith("signature") else ("tab:green" if name.startswith("curve") else
                                                                  "tab:orange")
        ax.errorbar(a["epochs_frac"][0], a["regret"][0], xerr=a["epochs_frac"][1], yerr=a["regret"][1], fmt="o",
                    color=color, capsize=2)
        ax.annotate(name, (a["epochs_frac"][0], a["regret"][0]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("fraction of epochs trained (lower = more saved)")
    ax.set_ylabel("regret (best final val_acc missed)")
    ax.set_title(f"{experiment}: signature (blue), curve (green), Optuna (orange)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / f"replay_{experiment}.png", dpi=130)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
