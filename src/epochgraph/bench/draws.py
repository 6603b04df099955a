"""Studies drawn from a population: what a user running a study of N trials would have saved and lost.

A population's recorded trainings are the pool; each draw is a study of ``study_size`` trials drawn at
random (without replacement, in random order) and replayed through a pruner (`epochgraph.search.replay`).
Per setting, over the draws: the epochs trained (share of the draw's epochs), the regret in accuracy
points (the draw's best final val_acc minus the best among the trials that ran to the end), the share of
draws that kept the best trial, and the share with regret <= 0.1 pp. Our populations and the curves
recorded elsewhere are scored alike; a forecast pruner is warm-started from every table but the
population scored.

The headline sets the shipped default (``default``: make run's pruner, which pauses, built as ``epochgraph-replay``
builds it), the prune-forever preset (``forecast``), and the setting of ours chosen on the other populations (the
cheapest safe on all of them: the honest estimate of choosing a default this way), against Optuna's defaults
(Median, SuccessiveHalving), Patient(Median), the Optuna setting chosen on the other populations (the
cheapest that is safe on all of them), the cheapest safe Optuna setting in hindsight, and the one-epoch
top-k baseline and the peers (promotion-type ASHA as Syne Tune runs it).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from epochgraph.forecast.records import RunRecord
from epochgraph.search.replay import PrunerFactory, pruner_factory, run_length
from epochgraph.search.score_pruners import SAFE_REGRET_PP, draw_studies, plot, score  # noqa: F401 (the draws step's)

SAFE_KEEP = 0.9  # "safe": keeps the best in 90 % of draws, or mean regret <= SAFE_REGRET_PP


def hindsight_cut(runs: Sequence[RunRecord], draws: Sequence[np.ndarray]) -> dict[str, float]:
    """A reference for the epochs a pruner needs: the cheapest single cut "train every trial t epochs, continue
    the k best at epoch t" that keeps the best trial of every draw, with t and k chosen *knowing the outcome*
    (the same t and k for all draws of the population)."""
    lengths = np.array([run_length(r) for r in runs])
    T = int(lengths.max())
    acc = np.zeros((len(runs), T))
    for i, r in enumerate(runs):
        v = np.array([np.nan if x is None else float(x) for x in r.history["val_acc"][:T]], dtype=float)
        acc[i, :len(v)] = np.nan_to_num(v, nan=0.0)
    finals = np.array([r.final_acc if math.isfinite(r.final_acc) else -1.0 for r in runs])
    best: dict[str, float] = {"epochs_frac": 1.0, "t": float(T), "k": float(max(len(d) for d in draws))}
    for t in range(1, T):
        # per draw, the best trial's place at epoch t (0: ahead of all): keeping k > place keeps it
        orders = [np.argsort(-acc[d, t - 1], kind="stable") for d in draws]
        k = max(int(np.flatnonzero(o == np.argmax(finals[d]))[0]) for o, d in zip(orders, draws)) + 1
        cost = []
        for d, order in zip(draws, orders):
            keep = order[:k]
            trained = np.minimum(lengths[d], t)
            trained[keep] = lengths[d][keep]
            cost.append(trained.sum() / lengths[d].sum())
        if np.mean(cost) < best["epochs_frac"]:
            best = {"epochs_frac": float(np.mean(cost)), "t": float(t), "k": float(k)}
    return best


def is_safe(r: Mapping[str, Any]) -> bool:
    return r["kept_best"] >= SAFE_KEEP or r["regret_pp"][0] <= SAFE_REGRET_PP


def settings(b: Mapping[str, Any], n_epochs: int, preset: str) -> dict[str, PrunerFactory]:
    d = b["draws"]
    warm = {"warm_start": [str(b["tables"])], "warm_exclude": [preset]}
    out = {name: pruner_factory("forecast", n_epochs, {**warm, **(changes or {})})
           for name, changes in (d.get("forecast") or {}).items()}
    for name, changes in (d.get("optuna") or {}).items():
        changes = dict(changes or {})
        out[name] = pruner_factory(changes.pop("pruner", name), n_epochs, changes)
    if d.get("default", True):  # make run's pruner exactly, as epochgraph-replay's setting `default` builds it
        from epochgraph.search.score_pruners import DEFAULT, setting_factory

        out = {DEFAULT: setting_factory(DEFAULT, n_epochs, preset, {"warm_start": [str(b["tables"])]}), **out}
    return out


def fingerprint(tables: str | Path) -> str:
    """A hash of what a setting's score depends on besides its settings and draws: the pruning and forecasting
    code (``epochgraph.search``, ``epochgraph.forecast``, the replay) and the population tables."""
    import hashlib

    import epochgraph

    root = Path(epochgraph.__file__).parent
    h = hashlib.sha256()
    for path in sorted([*root.glob("search/*.py"), *root.glob("forecast/*.py"),
                        *Path(tables).glob("*.parquet")]):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def draws_population(b: Mapping[str, Any], preset: str, runs: Sequence[RunRecord],
                     previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every setting over the draws of ``preset``; a setting scored in ``previous`` (the last run's results)
    with the same resolved configuration, draws, code and tables is taken from it, not replayed again."""
    import hashlib

    from tqdm import tqdm

    d = b["draws"]
    n_epochs = max(run_length(r) for r in runs)
    draws = draw_studies(len(runs), int(d["study_size"]), int(d["draws"]), int(d.get("seed", 0)))
    code = fingerprint(b["tables"])
    before = (previous or {}).get("settings", {})
    reuse = not bool(d.get("rescore", True))  # keep what the last run scored, whatever changed since
    table = {}
    for name, factory in tqdm(settings(b, n_epochs, preset).items(), desc=f"draws of {preset}", unit="pruner",
                              file=sys.stderr):
        key = hashlib.sha256(json.dumps({"config": getattr(factory, "config", None), "code": code,
                                         "draws": [x.tolist() for x in draws]}, sort_keys=True,
                                        default=str).encode()).hexdigest()[:16]
        if before.get(name, {}).get("key") == key or (reuse and name in before):
            table[name] = res = before[name]
            word = "(scored before)"
        else:
            table[name] = res = {**score(runs, factory, draws, n_jobs=int(b["workers"])), "key": key}
            word = ""
        tqdm.write(_progress(preset, name, res, f"<=0.1pp {res['regret_le_0.1pp']:.2f} {word}"), file=sys.stderr)
    for name, peer in (d.get("peers") or {}).items():  # outside Optuna, by their own packages: scored every run
        table[name] = res = score_peer(name, peer or {}, runs, draws)
        tqdm.write(_progress(preset, name, res, f"best done at {res['best_done_frac'][0]:.2f}"), file=sys.stderr)
    return {"population": preset, "runs": len(runs), "epochs": n_epochs, "study_size": int(d["study_size"]),
            "draws": len(draws), "settings": table, "hindsight_cut": hindsight_cut(runs, draws)}


def _progress(preset: str, name: str, res: Mapping[str, Any], tail: str) -> str:
    """The draws step's line for one setting of one population."""
    return (f"[bench] {preset} {name:22s} epochs {res['epochs_frac'][0]:.2f}  regret {res['regret_pp'][0]:.2f} pp  "
            f"kept {res['kept_best']:.2f}  {tail}")


PEERS = ("syne_tune",)  # setting names of the peers run by their own packages (not Optuna pruners)


def score_peer(name: str, peer: Mapping[str, Any], runs: Sequence[RunRecord],
               draws: Sequence[np.ndarray]) -> dict[str, Any]:
    """A peer of ``draws.peers`` on the draws: ``syne_tune_asha`` (promotion-type ASHA, `syne_tune_peer`)."""
    from epochgraph.bench import syne_tune_peer
    from epochgraph.errors import EpochgraphError

    if not name.startswith("syne_tune_asha"):
        raise EpochgraphError(f"bench.draws.peers.{name}: unknown peer; the peers are syne_tune_asha[-...] "
                              f"(promotion-type ASHA as Syne Tune runs it, with eta)")
    if not syne_tune_peer.available():
        raise EpochgraphError(f"bench.draws.peers.{name} needs {syne_tune_peer.SYNE_TUNE_REQUIREMENT}: "
                              f"pip install -e '.[bench]' (make bench installs it)")
    return syne_tune_peer.score_asha(runs, draws, eta=float(peer.get("eta", 3)))


def _cheapest_safe(pr: Mapping[str, Any], names: Sequence[str]) -> str | None:
    safe = [n for n in names if is_safe(pr[n])]
    return min(safe, key=lambda n: pr[n]["epochs_frac"][0]) if safe else None


def choose_on_others(results: Sequence[Mapping[str, Any]], population: str, names: Sequence[str]) -> str | None:
    """The Optuna setting a user would pick from the other populations: safe on every one of them, cheapest
    on average (else the one safe on most)."""
    others = [r for r in results if r["population"] != population]
    if not others:
        return None
    def key(n: str) -> tuple[float, float]:
        return (-sum(is_safe(r["settings"][n]) for r in others),
                float(np.mean([r["settings"][n]["epochs_frac"][0] for r in others])))
    return min(names, key=key)


def _cell(r: Mapping[str, Any] | None, name: str | None = None) -> str:
    if r is None:
        return "none safe"
    label = f"{name}: " if name else ""
    done = (r.get("best_done_frac") or [math.nan])[0]
    when = f", best done at {done:.2f}" if math.isfinite(done) else ""  # the epochs trained when the best completed
    return (f"{label}{r['epochs_frac'][0]:.2f}, kept {r['kept_best'] * 100:.0f} %, "
            f"{r['regret_pp'][0]:.2f} ± {r['regret_pp'][1]:.2f} pp{when}")


def headline(results: Sequence[Mapping[str, Any]], default: str = "default") -> str:
    """The markdown headline (see the module docstring) and the targets per population: ``default`` (make run's
    pruner: it pauses) against the prune-forever preset (``forecast``) and the peers."""
    rows = ["| population | ours, pausing (make run's default) | ours, pruning for good (`pruner=forecast`) | "
            "ours chosen on the others | Median | SuccessiveHalving | "
            "Patient(Median) | Optuna chosen on the others | cheapest safe Optuna in hindsight | one-epoch top-k | "
            "promotion ASHA (Syne Tune) | ours / cheapest | targets |", "|---" * 13 + "|"]
    for res in results:
        pr = res["settings"]
        optuna_names = [n for n in pr if n != default and not n.startswith(("forecast", "top", *PEERS))]
        ours = pr.get(default, pr.get("forecast"))
        med, sh, pat = pr.get("median"), pr.get("successive_halving"), pr.get("patient")
        lopo = choose_on_others(results, res["population"], optuna_names)
        ours_lopo = choose_on_others(results, res["population"], [n for n in pr if n.startswith("forecast")])
        cheap = _cheapest_safe(pr, optuna_names)
        top = min((n for n in pr if n.startswith("top")), key=lambda n: pr[n]["regret_pp"][0], default=None)
        asha = next((n for n in pr if n.startswith("syne_tune_asha")), None)
        ratio = ours["epochs_frac"][0] / pr[cheap]["epochs_frac"][0] if ours and cheap else math.nan
        checks = []
        if ours:
            checks.append("safe" if is_safe(ours) else "NOT safe")
            worst = max((x["regret_pp"][0] for x in (med, sh) if x), default=None)
            if worst is not None:
                checks.append("regret ≤ Median/SH" if ours["regret_pp"][0] <= worst + 1e-9 else "regret > Median/SH")
            if pat:
                share = ours["epochs_frac"][0] / pat["epochs_frac"][0]
                checks.append(f"{share:.2f} × Patient's epochs" + (" (≤ 0.6)" if share <= 0.6 else " (> 0.6)"))
        rows.append(f"| {res['population']} ({res['runs']} runs × {res['epochs']} epochs) | {_cell(ours)} | "
                    f"{_cell(pr.get('forecast'))} | {_cell(pr.get(ours_lopo), ours_lopo)} | "
                    f"{_cell(med)} | {_cell(sh)} | {_cell(pat)} | "
                    f"{_cell(pr.get(lopo), lopo)} | "
                    f"{_cell(pr.get(cheap), cheap)} | {_cell(pr.get(top), top)} | {_cell(pr.get(asha))} | "
                    f"{ratio:.2f} | {'; '.join(checks)} |")
    return "\n".join(rows) + "\n"


def ours_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Every setting of ours on every population: epochs trained (share), mean regret (pp) and, where a draw
    lost it, the share of draws that kept the best trial; the count of populations it is safe on and the
    means over the populations, with Patient(Median) for scale."""
    names = [n for n in results[0]["settings"] if n == "default" or n.startswith("forecast")] if results else []
    names += ["patient"] if results and "patient" in results[0]["settings"] else []
    head = "| setting | " + " | ".join(r["population"] for r in results) + " | safe on | mean epochs | mean regret |"
    rows = [head, "|---" * (len(results) + 4) + "|"]
    for name in names:
        cells, safe, epochs, regret = [], 0, [], []
        for r in results:
            x = r["settings"].get(name)
            if x is None:
                cells.append("")
                continue
            kept = "" if x["kept_best"] == 1 else f" ({x['kept_best'] * 100:.0f} %)"
            cells.append(f"{x['epochs_frac'][0]:.2f}, {x['regret_pp'][0]:.2f}{kept}")
            safe += is_safe(x)
            epochs.append(x["epochs_frac"][0])
            regret.append(x["regret_pp"][0])
        label = {"default": "`default` (make run: pausing)", "forecast": "`forecast` (pruning for good)"}.get(
            name, f"`{name}`")
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {safe} of {len(epochs)} | {np.mean(epochs):.2f} | "
                    f"{np.mean(regret):.2f} |")
    if all("hindsight_cut" in r for r in results):
        cuts = [r["hindsight_cut"] for r in results]
        rows.append("| one cut chosen in hindsight (t, k) | " + " | ".join(
            f"{c['epochs_frac']:.2f} (t={c['t']:.0f}, k={c['k']:.0f})" for c in cuts) + " | reference | "
            f"{np.mean([c['epochs_frac'] for c in cuts]):.2f} | 0 |")
    return "\n".join(rows) + "\n"


def draws_all(b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every population of ``draws.populations`` (ours and those recorded elsewhere) in drawn studies."""
    from epochgraph.forecast.population import from_table, read_table

    out_dir = Path(b["results"]) / "draws"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = read_table(b["tables"])
    results = []
    for preset in b["draws"]["populations"]:
        cached = out_dir / f"{preset}.json"
        previous = json.loads(cached.read_text()) if cached.is_file() else None
        res = draws_population(b, preset, from_table(table, [preset]), previous)
        cached.write_text(json.dumps(res, indent=2))
        results.append(res)
    md = ("# Studies drawn from each population\n\n"
          f"{b['draws']['draws']} studies of {b['draws']['study_size']} trials drawn from each population; mean over "
          "the draws (± std). Safe: keeps the best trial in ≥ 90 % of draws or mean regret ≤ 0.1 pp.\n\n"
          + headline(results) + "\n![epochs against regret](epochs_vs_regret.png)\n\n"
          "Every setting of ours: epochs trained (share), mean regret (pp), and in brackets the share of draws "
          "that kept the best trial where one lost it.\n\n" + ours_table(results))
    (out_dir / "draws.md").write_text(md)
    plot(results, out_dir / "epochs_vs_regret.png", default="default")
    print(md)
    return results
