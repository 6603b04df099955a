"""Time efficiency: the graph stage against a training epoch, per zoo model and per population."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epochgraph.bench._run import call
from epochgraph.paths import CONF_DIR


def graph_stage_bench(b: Mapping[str, Any]) -> None:
    """bench/graph_bench.py: graph stage vs. one training epoch per zoo model, rolled vs. unrolled."""
    script = Path(CONF_DIR).parent / "bench" / "graph_bench.py"
    call([sys.executable, str(script)], str(script))


def timing(b: Mapping[str, Any]) -> pd.DataFrame:
    """Per population: training epoch vs. graph stage, measured during the recorded trainings, beside the
    rolled vs. unrolled sizes and times of bench/graph_bench.py."""
    from epochgraph.forecast.population import read_table

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
