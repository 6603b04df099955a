"""The pruning benchmark behind ``make bench`` (`conf/bench/bench.yaml`): record populations of trainings,
export them as one table, compare forecasters on it, replay it through every pruner, and measure the
graph stage against training.

Each step reads what the previous one left (the MLflow store, then the table), so any step can be rerun
alone, and the population step only trains the seeds not yet FINISHED in the store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from epochgraph import tracking
from epochgraph.compare import RunRecord, load_runs
from epochgraph.errors import EpochgraphError, choice_error
from epochgraph.predictor import WEIGHT_SOURCES
from epochgraph.replay import PrunerFactory, pruner_factory, random_orders, replay_orders, run_length

log = logging.getLogger("epochgraph")
STEPS = ("graph_stage", "population", "export", "compare", "paper", "forecast", "replay", "timing", "summary")
MAX_EPOCHS = 1000  # read window for the MLflow histories; the table keeps each run's own epochs


def settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``bench`` section with ``quick_settings`` merged in when ``bench.quick`` (and checked)."""
    b = OmegaConf.create(dict(cfg["bench"]))
    uri = cfg["mlflow"]["tracking_uri"]
    if b.quick:
        quick = OmegaConf.to_container(b.quick_settings, resolve=True)
        uri = quick.pop("tracking_uri", uri)
        b.populations = quick.pop("populations")  # replaced, not merged: the quick run has its own list
        b = OmegaConf.merge(b, quick)
    out = OmegaConf.to_container(b, resolve=True)
    out["tracking_uri"] = uri
    out["experiment"] = cfg["mlflow"].get("experiment", "bench")
    for step in out["steps"]:
        if step not in STEPS:
            raise choice_error("bench step", step, STEPS, key="bench.steps")
    if out["quick"]:  # the graph-stage benchmark takes minutes: the quick run reads its committed results
        out["steps"] = [s for s in out["steps"] if s != "graph_stage"]
    if not out["populations"]:
        raise EpochgraphError("bench.populations is empty; name a preset and its size, "
                              "e.g. bench.populations={population_lenet: 64}")
    for name, n in out["populations"].items():
        if not (Path(_conf_dir()) / "experiment" / f"{name}.yaml").is_file():
            raise EpochgraphError(f"bench.populations names {name!r}, which is not a preset in "
                                  f"conf/experiment/; add conf/experiment/{name}.yaml or drop it")
        if int(n) < 1:
            raise EpochgraphError(f"bench.populations.{name}={n} must be >= 1 trainings")
    if int(out["workers"]) < 1:
        raise EpochgraphError(f"bench.workers={out['workers']} must be >= 1")
    return out


def _conf_dir() -> str:
    from epochgraph.cli.train import CONF_DIR

    return CONF_DIR


def _call(cmd: Sequence[str], what: str, hint: str = "") -> None:
    """Run ``cmd`` (its output goes to the terminal); a non-zero exit is one line naming ``what``."""
    log.info("running %s", " ".join(cmd))
    code = subprocess.call(list(cmd))
    if code != 0:
        raise EpochgraphError(f"{what} stopped with exit status {code} (see above){hint}")


def graph_stage_bench(b: Mapping[str, Any]) -> None:
    """bench/graph_bench.py: graph stage vs. one training epoch per zoo model, rolled vs. unrolled."""
    script = Path(_conf_dir()).parent / "bench" / "graph_bench.py"
    _call([sys.executable, str(script)], str(script))


# --- population -----------------------------------------------------------------------------------

def recorded_seeds(client: Any, experiment: str) -> set[int]:
    """Seeds of the FINISHED, unpruned trainings already in ``experiment`` (none if it does not exist)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return set()
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=50000)
    return {int(float(r.data.params["seed"])) for r in runs
            if "seed" in r.data.params and r.data.tags.get("pruned") != "true"
            and r.data.tags.get("epochgraph.role") != "sweep"}


def train_command(preset: str, seeds: Sequence[int], b: Mapping[str, Any]) -> list[str]:
    """The ``epochgraph-train`` multirun that records ``seeds`` of ``preset``."""
    workers = int(b["workers"])
    launcher = (["hydra/launcher=local_workers", f"hydra.launcher.n_jobs={workers}", "trainer.threads=1"]
                if workers > 1 else [])
    return [sys.executable, "-m", "epochgraph.cli.train", "-m", f"+experiment={preset}",
            f"seed={','.join(str(s) for s in seeds)}", f"mlflow.tracking_uri={b['tracking_uri']}",
            f"hydra.sweep.dir=multirun/bench/{preset}/${{now:%Y-%m-%d_%H-%M-%S}}", *launcher,
            *b["train_overrides"]]


def population_table(b: Mapping[str, Any], preset: str) -> Path:
    """Where the table of one population lives: ``<bench.tables>/<preset>.parquet``."""
    return Path(b["tables"]) / f"{preset}.parquet"


def table_seeds(b: Mapping[str, Any], preset: str) -> set[int]:
    """Seeds of ``preset`` already in its committed table (none when there is no table)."""
    from epochgraph.population import read_table

    path = population_table(b, preset)
    if not path.is_file():
        return set()
    return {int(s) for s in read_table(path)["seed"].dropna().unique()}


def build_population(b: Mapping[str, Any]) -> dict[str, int]:
    """Train the missing seeds of every population; returns preset -> trainings recorded."""
    # the store and experiments are created here: parallel workers would race to create their tables
    client = tracking.get_client(b["tracking_uri"])
    counts = {}
    for preset, n in b["populations"].items():
        tabled = table_seeds(b, preset)
        if all(s in tabled for s in range(int(n))):
            print(f"[bench] {preset}: all {n} trainings are in {population_table(b, preset)}; nothing to train "
                  f"(delete the file to record it again)", flush=True)
            counts[preset] = int(n)
            continue
        tracking.experiment_id(client, preset)
        have = recorded_seeds(client, preset)
        missing = [s for s in range(int(n)) if s not in have]
        print(f"[bench] {preset}: {int(n) - len(missing)} of {n} trainings recorded, "
              f"{len(missing)} to train", flush=True)
        if missing:
            _call(train_command(preset, missing, b), f"the trainings of {preset}",
                  "; run make bench again to resume with the seeds still missing")
        lost = sorted(set(range(int(n))) - recorded_seeds(client, preset))
        if lost:
            raise EpochgraphError(f"{preset}: seeds {lost[:10]} did not finish (FAILED or KILLED in the MLflow "
                                  f"store); run make bench again to retry them")
        counts[preset] = int(n)
    return counts


# --- export ---------------------------------------------------------------------------------------

def trim_weights(df: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """The weight baselines kept for epochs 1..``epochs`` only (the forecasts read t <= compare.epochs): a
    wide last layer (AlexNet's 5,130 weights) would otherwise take a table past what a repository holds."""
    from epochgraph.predictor import WEIGHT_SOURCES

    df = df.copy()
    for source in WEIGHT_SOURCES:
        if source in df:
            df[source] = [v if e <= epochs else [] for v, e in zip(df[source], df["epoch"])]
    return df


def export_table(b: Mapping[str, Any]) -> pd.DataFrame:
    """Read every population from MLflow (histories and weights) and write its table; a population with
    no FINISHED training in the store keeps the table it has (recorded elsewhere, committed)."""
    from epochgraph.population import EXTRA_METRICS, read_table, to_table, write_table

    client = tracking.get_client(b["tracking_uri"])
    frames = []
    for preset, n in b["populations"].items():
        path = population_table(b, preset)
        if not recorded_seeds(client, preset):
            if not path.is_file():
                raise EpochgraphError(f"{preset}: no training in the MLflow store {b['tracking_uri']} and no "
                                      f"table {path}; record it first (bench.steps=[population])")
            print(f"[bench] {preset}: kept {path} (nothing of it in the MLflow store)", flush=True)
            frames.append(read_table(path))
            continue
        runs = load_runs(client, preset, MAX_EPOCHS, weight_sources=WEIGHT_SOURCES, extra_metrics=EXTRA_METRICS)
        runs = [r for r in runs if int(float(r.params.get("seed", -1))) < int(n)]
        df = trim_weights(to_table(runs, preset), int(b["weight_epochs"]))
        path = write_table(df, path)
        print(f"[bench] table {path}: {df['run_id'].nunique()} runs, {len(df)} rows, "
              f"{path.stat().st_size / 2**20:.1f} MB", flush=True)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# --- compare --------------------------------------------------------------------------------------

def compare_populations(b: Mapping[str, Any]) -> None:
    """``epochgraph-compare`` on the table, one population at a time, t = 1..compare.epochs."""
    for preset in b["populations"]:
        cmd = [sys.executable, "-m", "epochgraph.cli.compare", f"experiment={preset}",
               f"table={population_table(b, preset)}",
               f"epochs={b['compare']['epochs']}", f"output_dir={Path(b['results']) / 'compare' / preset}",
               f"mlflow.tracking_uri={b['tracking_uri']}", f"n_jobs={b['workers']}", *b["compare"]["overrides"]]
        _call(cmd, f"epochgraph-compare on {preset}")


# --- replay ---------------------------------------------------------------------------------------

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


KINDS = ("signature", "hybrid", "curve")  # the SignaturePruner's feature sources, as setting-name prefixes


def _kind(name: str) -> str:
    if name.startswith("forecast"):
        return "forecast"
    if name.startswith("top"):
        return "one-epoch"
    return next((k for k in KINDS if name.startswith(k)), "optuna")


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
            kind = _kind(name)
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
    names = [n for n in results[0]["pruners"] if _kind(n) == kind and n != "none"
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
        opt = _cheapest(pr, [n for n in pr if _kind(n) == "optuna" and n != "none"], keep)
        one = _cheapest(pr, [n for n in pr if _kind(n) == "one-epoch"], keep)
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
    from epochgraph.population import from_table, read_table

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


# --- the paper's protocol (Table 2 at its labelling) and Q2 ---------------------------------------------

def paper_cut(final_accs: Sequence[float], min_side: float = 0.2) -> float:
    """The paper's label threshold: between the low and the high mode of the final accuracies, i.e. the
    middle of the widest gap between consecutive sorted accuracies that leaves at least ``min_side`` of the
    runs on each side."""
    a = np.sort(np.nan_to_num(np.asarray(final_accs, dtype=float)))
    lo = max(1, math.ceil(min_side * len(a)))
    gaps = [(a[i] - a[i - 1], i) for i in range(lo, len(a) - lo + 1)]
    if not gaps:
        raise EpochgraphError(f"{len(a)} runs are too few to find a threshold between two modes")
    _, i = max(gaps)
    return float((a[i] + a[i - 1]) / 2)


def paper_protocol(b: Mapping[str, Any]) -> None:
    """Table 2 of the paper per population at its labelling (a threshold between the accuracy modes) and at
    the median, and its Q2 generalisation splits, with ``epochgraph-compare`` on the tables."""
    from epochgraph.population import read_table

    p = b["paper"]
    out = Path(b["results"]) / "paper"
    table = read_table(b["tables"])
    common = [f"table={b['tables']}", f"mlflow.tracking_uri={b['tracking_uri']}", f"n_jobs={b['workers']}",
              f"epochs={p['epochs']}", *p["overrides"]]
    cuts = {}
    for preset in b["populations"]:
        finals = table.loc[table["experiment"] == preset].groupby("run_id")["final_acc"].first()
        cuts[preset] = paper_cut(finals.to_numpy())
        # the median labelling is the compare step's (bench/results/compare/<preset>/); a threshold table
        # already written is kept (delete bench/results/paper/threshold/<preset> to redo it)
        if (out / "threshold" / preset / "comparison.csv").is_file():
            continue
        _call([sys.executable, "-m", "epochgraph.cli.compare", f"experiment={preset}",
               f"label.threshold={cuts[preset]:.4f}", *common, f"output_dir={out / 'threshold' / preset}"],
              f"epochgraph-compare (threshold) on {preset}")
    for name, split in (p.get("q2") or {}).items():
        present = [e for e in split["experiments"] if e in b["populations"]]
        if len(present) < len(split["experiments"]):
            print(f"[bench] Q2 {name}: skipped, needs {split['experiments']}", flush=True)
            continue
        _call([sys.executable, "-m", "epochgraph.cli.compare", f"experiment=[{','.join(present)}]",
               f"train_on={_override(split['train_on'])}", f"test_on={_override(split['test_on'])}", *common,
               f"output_dir={out / 'q2' / name}"], f"epochgraph-compare Q2 {name}")
    (out / "cuts.json").write_text(json.dumps(cuts, indent=2))
    paper_markdown(b, cuts)


def _override(value: Any) -> str:
    """A value in Hydra's override grammar (``{model.width: 1.0}``, ``[lenet, vgg]``): JSON's quoted keys
    are not part of it."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_override(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_override(v) for v in value) + "]"
    return str(value)


PAPER_COLUMNS = {"Ours-deg": "signature-degree-plain", "Ours-evec": "signature-eigenvector-plain",
                 "B_Wl": "b_wl", "B_Ŵ": "b_what", "B_W′": "b_wprime", "unroll-deg": "unrolled",
                 "curve": "curve", "hybrid": "hybrid-both-plain"}


def paper_markdown(b: Mapping[str, Any], cuts: Mapping[str, float]) -> str:
    """bench/results/paper/paper.md: the Table 2 columns per population, labelling and t, and the Q2 table."""
    out = Path(b["results"]) / "paper"
    lines = ["# The paper's protocol", "",
             "Balanced accuracy (5-fold CV on held-out trainings; Q2: one fit on the training architectures, "
             "scored on the unseen ones), SVM / MLP, the paper's Table 2 columns plus the learning curve and the "
             "hybrid. *threshold*: high = final val_acc above the cut between the low and high accuracy modes "
             "(the paper's labelling; cut per population below); *median*: high = at or above the median.", ""]

    def row(csv: Path, t: int) -> list[str]:
        df = pd.read_csv(csv)
        cells = []
        for clf in ("svm", "mlp"):
            for col in PAPER_COLUMNS.values():
                hit = df[(df["t"] == t) & (df["classifier"] == clf) & (df["features"] == col)]
                v = hit["bal_acc_mean"].iloc[0] if len(hit) else math.nan
                cells.append("-" if not np.isfinite(v) else f"{v:.2f}")
        return cells

    head = ("| population | label (cut) | t | " + " | ".join(f"SVM {c}" for c in PAPER_COLUMNS) + " | "
            + " | ".join(f"MLP {c}" for c in PAPER_COLUMNS) + " |")
    lines += [head, "|" + "---|" * (3 + 2 * len(PAPER_COLUMNS))]
    for preset in b["populations"]:
        for label in ("threshold", "median"):
            csv = (out / "threshold" if label == "threshold" else Path(b["results"]) / "compare") / preset / \
                "comparison.csv"
            if not csv.is_file():
                continue
            cut = f"{cuts.get(preset, math.nan):.3f}" if label == "threshold" else "median"
            for t in b["paper"]["table_t"]:
                lines.append(f"| {preset} | {label} ({cut}) | {t} | " + " | ".join(row(csv, t)) + " |")
    lines += ["", "## Q2: generalising to unseen networks", "", head.replace("population | label (cut)",
                                                                          "train → test | label"),
              "|" + "---|" * (3 + 2 * len(PAPER_COLUMNS))]
    for name, split in (b["paper"].get("q2") or {}).items():
        csv = out / "q2" / name / "comparison.csv"
        if csv.is_file():
            for t in b["paper"]["table_t"]:
                lines.append(f"| {split['train_on']} → {split['test_on']} | median of the training runs | {t} | "
                             + " | ".join(row(csv, t)) + " |")
    text = "\n".join(lines) + "\n"
    (out / "paper.md").write_text(text)
    print(text)
    return text


# --- forecast (the forecaster alone) -----------------------------------------------------------------

def forecast_scores(b: Mapping[str, Any]) -> pd.DataFrame:
    """Spearman ρ of the forecast final val_acc and of val_acc at t with the true final val_acc, per
    population: (a) the forecaster fitted on the other populations only; (b) the same plus the population's
    own trainings from 4 of 5 folds (scored on the fifth), as the pruner is once a study has run a while."""
    from omegaconf import OmegaConf
    from sklearn.model_selection import KFold
    from threadpoolctl import threadpool_limits

    from epochgraph.forecast import FinalAccuracyForecaster, spearman_at, training_pairs
    from epochgraph.population import from_table, read_table

    conf = OmegaConf.load(Path(_conf_dir()) / "pruner" / "forecast.yaml")
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


# --- timing (paper Q3) ----------------------------------------------------------------------------

def timing(b: Mapping[str, Any]) -> pd.DataFrame:
    """Per population: training epoch vs. graph stage, measured during the recorded trainings, beside the
    rolled vs. unrolled sizes and times of bench/graph_bench.py."""
    from epochgraph.population import read_table

    df = read_table(b["tables"])
    df = df[df["experiment"].isin(list(b["populations"]))]
    rows = []
    for (preset, model), g in df.groupby(["experiment", "model"], sort=False):
        epoch_s, graph_s = g["time/epoch_s"].median(), g["time/graph_s"].median()
        rows.append({"population": preset, "model": model, "train_size": g["data.train_size"].iloc[0],
                     "epochs timed": int(g["time/graph_s"].notna().sum()), "training epoch (s)": epoch_s,
                     "graph stage (ms)": 1000 * graph_s, "graph stage / epoch (%)": 100 * graph_s / epoch_s})
    out = pd.DataFrame(rows)
    path = Path(b["graph_stage"])
    graph = json.loads(path.read_text()) if path.is_file() else {}
    sizes = {r["model"]: r for r in graph.get("zoo", [])}
    md = ["# Time efficiency (paper Q3)", "",
          "Medians over every epoch of every recorded training (one torch thread, the graph stage on the "
          "same core):", "", out.to_markdown(index=False, floatfmt=".3f"), ""]
    if sizes:
        md += [f"Rolled vs. unrolled graph of the same models at default width, untrained ({path}, "
               "from bench/graph_bench.py; the unrolled degree is computed from the layer shapes without "
               "building its edge list):", "",
               "| model | rolled nodes | rolled edges | rolled MB | graph stage, rolled (ms) | unrolled nodes "
               "| unrolled edges | unrolled MB | unrolled degree (ms) |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for model in out["model"].unique():
            s = sizes.get(model)
            if s:
                unrolled = (f"{1000 * s['unrolled_s']:.1f}" if s.get("unrolled_status") == "ok"
                            else str(s.get("unrolled_status")))
                md.append(f"| {model} | {s['nodes']:,} | {s['edges']:,} | {s['rolled_mb']:.1f} | "
                          f"{1000 * s['graph_auto_s']:.1f} | {s['unrolled_nodes']:,} | {s['unrolled_edges']:,} | "
                          f"{s['unrolled_mb']:.0f} | {unrolled} |")
    text = "\n".join(md) + "\n"
    Path(b["results"]).mkdir(parents=True, exist_ok=True)
    (Path(b["results"]) / "time_efficiency.md").write_text(text)
    timing_plot(out, Path(b["results"]) / "time_efficiency.png")
    print(text)
    return out


def timing_plot(out: pd.DataFrame, path: Path) -> Path:
    """Training epoch vs. graph stage per population (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = np.arange(len(out))
    ax.bar(x - 0.2, out["training epoch (s)"], 0.4, label="training epoch", color="tab:green")
    ax.bar(x + 0.2, out["graph stage (ms)"] / 1000, 0.4, label="graph stage (rolled graph + centralities)",
           color="tab:blue")
    for i, pct in enumerate(out["graph stage / epoch (%)"]):
        ax.annotate(f"{pct:.1f} %", (i + 0.2, out["graph stage (ms)"].iloc[i] / 1000), ha="center",
                    xytext=(0, 3), textcoords="offset points", fontsize=8)
    ax.set_xticks(x, [f"{m}\n({p})" for m, p in zip(out["model"], out["population"])], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per epoch (median)")
    ax.set_title("Graph stage vs. training, per epoch (paper Q3)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def machine() -> str:
    import torch

    return (f"{os.cpu_count()} CPU cores, {platform.platform()}, torch {torch.__version__} "
            f"({'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only'})")


# --- summary --------------------------------------------------------------------------------------

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


def pruning_targets(res: Mapping[str, Any], kind: str = "signature") -> dict[str, Any]:
    """The ``kind`` setting (signature, hybrid, curve) saving most epochs at zero regret (in every order;
    else the lowest regret), against the Optuna pruner saving most at no more regret."""
    pr = res["pruners"]
    sig = {k: v for k, v in pr.items() if _kind(k) == kind}
    opt = {k: v for k, v in pr.items() if _kind(k) == "optuna" and k != "none"}
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


def log_results(b: Mapping[str, Any]) -> str:
    """One MLflow run in experiment ``bench`` holding the result files (tables, plots, JSON)."""
    import mlflow

    client = tracking.get_client(b["tracking_uri"])
    exp_id = tracking.experiment_id(client, b["experiment"])
    results = Path(b["results"])
    name = "pruning-benchmark" + ("-quick" if b["quick"] else "")
    with mlflow.start_run(experiment_id=exp_id, run_name=name) as run:
        mlflow.set_tags({"epochgraph.role": "bench", "populations": ",".join(b["populations"])})
        mlflow.log_params({"populations": json.dumps(b["populations"]), "orders": b["replay"]["orders"],
                           "compare.epochs": b["compare"]["epochs"], "tables": b["tables"]})
        for f in sorted([*results.glob("*.md"), *results.glob("*.png")]):
            mlflow.log_artifact(str(f))
        for sub in ("replay", "paper"):
            if (results / sub).is_dir():
                mlflow.log_artifacts(str(results / sub), artifact_path=sub)
        return run.info.run_id


def run_steps(b: Mapping[str, Any], command: str) -> None:
    """The steps of ``bench.steps``, in the order of `STEPS`."""
    def finish(b: Mapping[str, Any]) -> None:
        summary(b, command)
        run_id = log_results(b)
        print(f"[bench] results in {b['results']}/ and MLflow run {run_id} (experiment {b['experiment']})")

    actions = {"graph_stage": graph_stage_bench, "population": build_population, "export": export_table,
               "compare": compare_populations, "paper": paper_protocol,
               "forecast": forecast_scores, "replay": replay_all, "timing": timing, "summary": finish}
    for step in STEPS:
        if step in b["steps"]:
            actions[step](b)
