"""The paper's protocol (Table 2, Q2): balanced accuracy of the high/low classifiers at the paper's labelling."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epochgraph.bench._run import call
from epochgraph.errors import EpochgraphError


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
    from epochgraph.forecast.population import read_table

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
        call([sys.executable, "-m", "epochgraph.cli.compare", f"experiment={preset}",
               f"label.threshold={cuts[preset]:.4f}", *common, f"output_dir={out / 'threshold' / preset}"],
              f"epochgraph-compare (threshold) on {preset}")
    for name, split in (p.get("q2") or {}).items():
        present = [e for e in split["experiments"] if e in b["populations"]]
        if len(present) < len(split["experiments"]):
            print(f"[bench] Q2 {name}: skipped, needs {split['experiments']}", flush=True)
            continue
        call([sys.executable, "-m", "epochgraph.cli.compare", f"experiment=[{','.join(present)}]",
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
