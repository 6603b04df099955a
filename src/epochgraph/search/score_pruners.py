"""Score pruners on any recorded curves: ``epochgraph-replay`` (the draws step of the benchmark, as a command).

From each population of the given tables (Parquet tables as `epochgraph-export` or the benchmark writes them;
one population per ``experiment`` value), ``draws`` studies of ``trials`` trainings are drawn at random and
replayed through each setting (`score`, `epochgraph.search.replay.replay`): pause and
resume simulated as the sweeper runs them (a recorded curve resumes where it paused; an epoch counts once),
each trial declaring its own planned epochs (its ``trainer.epochs``), the forecaster's warm start never from
the population scored. Per population and setting: the mean share of the epochs trained, the mean regret in
accuracy points, the share of draws that kept the best trial, and the mean share of the epochs trained when
the best trial completed (``best_done_frac``; pausing delays it).

A setting is ``default`` (the pruner ``make run`` uses: ``conf/experiment/pruned_sweep.yaml``; it pauses),
``prune_forever`` (``conf/pruner/forecast.yaml`` with the experiment's changes and ``pause=false``: pruning is
final), any preset of ``conf/pruner`` (``forecast_pause``, ``patient``, ``median``, ``successive_halving``,
``topk``, ...) or a name of ``variants`` (``{pruner: <preset>, <argument>: <value>, ...}``).
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from epochgraph.errors import EpochgraphError, choice_error
from epochgraph.forecast.records import RunRecord
from epochgraph.paths import CONF_DIR
from epochgraph.search.replay import PrunerFactory, replay

DEFAULT, PRUNE_FOREVER = "default", "prune_forever"
SAFE_REGRET_PP = 0.1  # the regret a draw may lose and still count as safe (the plot's dashed line)


def draw_studies(n_runs: int, size: int, n_draws: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(n_runs, size=min(size, n_runs), replace=False) for _ in range(n_draws)]


def _one(runs: Sequence[RunRecord], draw: np.ndarray, factory: PrunerFactory) -> dict[str, float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sub = [runs[i] for i in draw]
    return replay(sub, list(range(len(sub))), factory())


def score(runs: Sequence[RunRecord], factory: PrunerFactory, draws: Sequence[np.ndarray],
          n_jobs: int = 1) -> dict[str, Any]:
    """One setting over ``draws``: epochs, regret (pp), kept-best share, share with regret <= 0.1 pp."""
    if n_jobs > 1:
        from joblib import Parallel, delayed

        res = Parallel(n_jobs=n_jobs)(delayed(_one)(runs, d, factory) for d in draws)
    else:
        res = [_one(runs, d, factory) for d in draws]
    return summarise(res)


def summarise(res: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """A setting's studies (one replay's metrics each) over the draws: mean ± std of the epochs trained, of when the
    best trial completed and of the regret (pp), the share of draws that kept the best, the per-draw regrets."""
    epochs = np.array([r["epochs_frac"] for r in res])
    regret = np.array([r["regret"] for r in res]) * 100
    done = [r["best_done_frac"] for r in res if math.isfinite(r["best_done_frac"])]  # NaN: the best never completed
    return {"epochs_frac": [float(epochs.mean()), float(epochs.std())],
            "best_done_frac": [float(np.mean(done)), float(np.std(done))] if done else [math.nan, math.nan],
            "resumed": float(np.mean([r["resumed"] for r in res])),
            "regret_pp": [float(regret.mean()), float(regret.std())],
            "kept_best": float(np.mean(regret == 0)), "regret_le_0.1pp": float(np.mean(regret <= SAFE_REGRET_PP)),
            "regret_per_draw": regret.tolist()}


def plot(results: Sequence[Mapping[str, Any]], path: Path, default: str = "forecast") -> Path:
    """Epochs against regret, one panel per population; ``default`` (the shipped setting) a large red star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(results))
    rows = math.ceil(len(results) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax, res in zip(axes.flat, results):
        for i, (name, r) in enumerate(res["settings"].items()):
            ours = name.startswith("forecast") or name in (default, "default", "prune_forever")
            shipped, peer = name == default, name.startswith("syne_tune")
            color = ("tab:red" if shipped else "lightcoral") if ours else (
                "tab:green" if name.startswith("top") else "tab:purple" if peer else "tab:blue")
            ax.errorbar(r["epochs_frac"][0], r["regret_pp"][0], xerr=r["epochs_frac"][1], yerr=r["regret_pp"][1],
                        fmt="*" if ours else "s" if peer else "o", ms=13 if shipped else (8 if ours or peer else 5),
                        capsize=2, color=color, zorder=3 if shipped else 2)
            if shipped or peer or name in ("median", "successive_halving", "patient", "prune_forever"):
                ax.annotate(name, (r["epochs_frac"][0], r["regret_pp"][0]), fontsize=7,
                            xytext=(3, 3 if i % 2 == 0 else -10), textcoords="offset points")  # neighbours apart
        ax.axhline(SAFE_REGRET_PP, color="grey", lw=0.6, ls="--")
        ax.set_title(f"{res['population']} ({res['draws']} studies of {res['study_size']})", fontsize=9)
        ax.set_xlabel("share of the epochs trained")
        ax.set_ylabel("regret (accuracy points), mean ± std")
        ax.set_xlim(0, 1.02)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    title = ("Studies drawn from each population: ours (red star: shipped; light: the other settings) against "
             "Optuna's pruners (blue), top-k (green) and Syne Tune's promotion ASHA (purple); dashed: 0.1 pp")
    fig.suptitle(textwrap.fill(title, width=int(11 * 5.2 * cols)))  # within the figure however few the panels
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path




def default_pruner() -> tuple[str, dict[str, Any]]:
    """The pruner ``make run`` builds (``+experiment=pruned_sweep``): its ``conf/pruner`` preset and the arguments
    the experiment changes."""
    from omegaconf import OmegaConf

    exp = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "experiment" / "pruned_sweep.yaml"))
    preset = next((str(v) for entry in exp.get("defaults", []) if isinstance(entry, dict)
                   for k, v in entry.items() if k.split()[-1].strip("/") == "pruner"), "forecast")
    return preset, dict(exp.get("pruner") or {})


def _presets() -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / "pruner").glob("*.yaml"))


def setting_factory(name: str, n_epochs: int, population: str, cfg: Mapping[str, Any]):
    """A factory of the pruner of setting ``name`` for a population of ``n_epochs``-epoch trainings; a forecast
    pruner is warm-started from ``cfg.warm_start`` without ``population``."""
    from epochgraph.search.replay import pruner_factory

    variants = dict(cfg.get("variants") or {})
    warm = {"warm_start": [str(w) for w in cfg.get("warm_start") or []], "warm_exclude": [population]}
    if name in (DEFAULT, PRUNE_FOREVER):
        preset_name, changes = default_pruner()
        if name == PRUNE_FOREVER:  # the forecast preset as shipped, with the experiment's changes: pruning for good
            preset_name, changes = "forecast", {**changes, "pause": False}
    elif name in variants:
        changes = dict(variants[name] or {})
        preset_name = str(changes.pop("pruner", "forecast"))
    elif name in _presets():
        preset_name, changes = name, {}
    else:
        raise choice_error("setting", name, [DEFAULT, PRUNE_FOREVER, *_presets(), *variants], key="settings")
    from epochgraph.search.replay import preset

    path = Path(CONF_DIR) / "pruner" / f"{preset_name}.yaml"
    if path.is_file() and "warm_start" in preset(path):  # a forecast pruner (an unknown preset: pruner_factory says)
        changes = {**warm, **changes}
    return pruner_factory(preset_name, n_epochs, changes)


def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def score_tables(cfg: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every setting on every population of ``cfg.tables``: writes ``output_dir/replay.json``, ``replay.md`` and
    ``replay.png`` and returns the JSON's content (module docstring)."""
    from tqdm import tqdm

    from epochgraph.forecast.population import from_table, read_table
    from epochgraph.search.replay import planned_length

    tables = [str(t) for t in (cfg["tables"] if isinstance(cfg["tables"], (list, tuple)) else [cfg["tables"]])]
    if not tables:
        raise EpochgraphError("tables=[] names no population table; e.g. tables=[bench/results/populations]")
    for key in ("trials", "draws"):
        if int(cfg[key]) < 1:
            raise EpochgraphError(f"{key}={cfg[key]} must be >= 1")
    settings = [str(s) for s in cfg["settings"]]
    if not settings:
        raise EpochgraphError("settings=[] names no pruner; e.g. settings=[default,prune_forever,patient]")
    import pandas as pd

    df = pd.concat([read_table(t) for t in tables], ignore_index=True)
    populations = [str(p) for p in (cfg.get("populations") or sorted(set(df["experiment"])))]
    out_dir = Path(cfg["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    results = []
    for population in populations:
        runs = from_table(df, [population])
        n_epochs = max(planned_length(r) for r in runs)
        draws = draw_studies(len(runs), int(cfg["trials"]), int(cfg["draws"]), int(cfg.get("seed", 0)))
        factories = {name: setting_factory(name, n_epochs, population, cfg) for name in settings}
        table = {}
        for name, factory in tqdm(factories.items(), desc=f"{population} ({len(runs)} runs, {len(draws)} draws)",
                                  unit="setting", file=sys.stderr):
            r = score(runs, factory, draws, n_jobs=int(cfg.get("workers", 1)))
            table[name] = r
            tqdm.write(f"{population:28s} {name:20s} epochs {r['epochs_frac'][0]:.2f}  regret "
                       f"{r['regret_pp'][0]:.2f} pp  kept {r['kept_best']:.2f}  best done at "
                       f"{r['best_done_frac'][0]:.2f}", file=sys.stderr)
        out[population] = {name: {"epochs_frac": _clean(r["epochs_frac"][0]), "regret_pp": _clean(r["regret_pp"][0]),
                                   "kept": _clean(r["kept_best"]), "best_done_frac": _clean(r["best_done_frac"][0]),
                                   "epochs_frac_std": _clean(r["epochs_frac"][1]),
                                   "regret_pp_std": _clean(r["regret_pp"][1]), "resumed": _clean(r["resumed"])}
                           for name, r in table.items()}
        results.append({"population": population, "runs": len(runs), "epochs": n_epochs,
                        "study_size": min(int(cfg["trials"]), len(runs)), "draws": len(draws), "settings": table})
    (out_dir / "replay.json").write_text(json.dumps(out, indent=2))
    md = markdown(out, settings)
    (out_dir / "replay.md").write_text(md)
    plot(results, out_dir / "replay.png", default=settings[0])
    print(md + f"\nwritten: {out_dir / 'replay.json'}, {out_dir / 'replay.md'}, {out_dir / 'replay.png'}", flush=True)
    return out


def markdown(out: Mapping[str, Mapping[str, Mapping[str, Any]]], settings: Sequence[str]) -> str:
    """One row per population and setting: epochs trained, regret, kept best, when the best completed."""
    def f(v: float | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    rows = ["| population | setting | epochs trained | regret (pp) | kept best | best done at |",
            "|---|---|---|---|---|---|"]
    for population, table in out.items():
        for name in settings:
            r = table[name]
            rows.append(f"| {population} | {name} | {f(r['epochs_frac'], '.2f')} ± {f(r['epochs_frac_std'], '.2f')} | "
                        f"{f(r['regret_pp'], '.2f')} ± {f(r['regret_pp_std'], '.2f')} | {f(r['kept'], '.0%')} | "
                        f"{f(r['best_done_frac'], '.2f')} |")
    return "\n".join(rows) + "\n"
