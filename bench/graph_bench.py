"""Graph-stage benchmark (paper Q3): graph stage vs. one training epoch, rolled vs. unrolled graph, and
a VGG-11-ImageNet-size rolled graph end to end.  Run: `make bench` (or `.venv/bin/python bench/graph_bench.py`).

Writes bench/results/graph_stage.md and bench/results/graph_stage.json.

* One training epoch = 10,000 random 1 x 28 x 28 images, batch 128, SGD with momentum, on the CPU,
  timed in full (``--epoch-batches N`` times N batches and scales instead, for a quick look).
* Graph stage = rolled graph from the state_dict + weighted degree + eigenvector centrality + the 10
  aggregators (`snapshot_signature`), median of `REPEATS`, for each backend; ``auto`` is what the
  training loop runs. Targets: graph stage <= 1% of the epoch; VGG-11-size build + degree +
  eigenvector <= 1 s.
* Unrolled graph = `unrolled_degree` under the default 2 GiB budget; a model over it is reported,
  not built.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from epochgraph.baselines import DEFAULT_BUDGET, OverBudget, unrolled_degree, unrolled_plan
from epochgraph.centrality import (
    eigenvector_centrality,
    eigenvector_centrality_arrays,
    eigenvector_centrality_blocks,
    weighted_degree,
    weighted_degree_arrays,
    weighted_degree_blocks,
)
from epochgraph.models import build_model
from epochgraph.rolled_graph import block_graph, edge_arrays, graph_from_arrays
from epochgraph.signature import BACKENDS, snapshot_signature
from epochgraph.topology import Topology, TopologyBuilder

OUT = Path(__file__).parent / "results"
MODELS = ["lenet", "alexnet", "vgg11", "resnet20", "resnet32", "resnet44"]
EPOCH_IMAGES, BATCH = 10_000, 128
REPEATS = 5
MB = 2**20


def _median_time(fn: Callable[[], Any], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def epoch_time(model: nn.Module, batches: int | None) -> float:
    """Seconds of one training epoch (all of it, or ``batches`` batches scaled to the epoch)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(EPOCH_IMAGES, 1, 28, 28), torch.randint(0, 10, (EPOCH_IMAGES,))
    model.train()

    def step(idx: torch.Tensor) -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()

    order = torch.randperm(EPOCH_IMAGES)
    step(order[:BATCH])  # warm-up
    starts = list(range(0, EPOCH_IMAGES, BATCH))
    if batches is not None:
        per_batch = _median_time(lambda: step(order[:BATCH]), batches)
        return per_batch * EPOCH_IMAGES / BATCH
    t0 = time.perf_counter()
    for i in starts:
        step(order[i:i + BATCH])
    return time.perf_counter() - t0


def zoo_rows(batches: int | None) -> list[dict]:
    rows = []
    for name in MODELS:
        model = build_model(name, in_channels=1, image_size=28)
        topo, sd = model.topology(), model.state_dict()
        edges = edge_arrays(topo, sd)
        row: dict[str, Any] = {"model": name, "nodes": edges.num_nodes, "edges": edges.num_edges,
                               "rolled_mb": (edges.num_edges * 24 + edges.num_nodes * 8) / MB}
        for backend in BACKENDS:
            snapshot_signature(topo, sd, backend=backend)  # warm-up (imports, first allocations)
            row[f"graph_{backend}_s"] = _median_time(
                lambda t=topo, w=sd, b=backend: snapshot_signature(t, w, backend=b))
        plan = unrolled_plan(model, 1, 28)
        row.update(unrolled_nodes=plan.num_nodes, unrolled_edges=plan.num_edges,
                   unrolled_mb=plan.bytes_needed / MB, unrolled_budget_mb=DEFAULT_BUDGET / MB)
        try:
            unrolled_degree(model, 1, 28)
            row["unrolled_s"] = _median_time(lambda m=model: unrolled_degree(m, 1, 28), 3)
            row["unrolled_status"] = "ok"
        except OverBudget as err:
            row["unrolled_s"] = None
            row["unrolled_status"] = str(err)
        row["epoch_s"] = epoch_time(model, batches)
        row["graph_share_auto"] = row["graph_auto_s"] / row["epoch_s"]
        rows.append(row)
        print(f"{name:9s} epoch {row['epoch_s']:.2f} s  graph stage (auto) {row['graph_auto_s'] * 1e3:.1f} ms "
              f"= {100 * row['graph_share_auto']:.2f}%  unrolled {row['unrolled_status']}", flush=True)
    return rows


def vgg11_imagenet_topology(model: nn.Module) -> Topology:
    """Topology of torchvision's ``vgg11``: 8 convs, then a 512 x 7 x 7 flatten into 4096-4096-classes."""
    t = TopologyBuilder(3)
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    for k, i in enumerate(convs, start=1):
        t.add(f"conv{k}", model.features[i].out_channels, "conv", f"features.{i}.weight", bias=f"features.{i}.bias")
    for k, (i, kind, spatial) in enumerate([(0, "flatten", 49), (3, "linear", 1), (6, "linear", 1)], start=1):
        t.add(f"fc{k}", model.classifier[i].out_features, kind, f"classifier.{i}.weight",
              bias=f"classifier.{i}.bias", spatial=spatial)
    return t.build()


def vgg11_imagenet() -> dict:
    """torchvision's vgg11(num_classes=10), random weights: 11k nodes, ~20M edges in the rolled graph."""
    from torchvision.models import vgg11

    torch.manual_seed(0)
    model = vgg11(num_classes=10)
    topo, sd = vgg11_imagenet_topology(model), model.state_dict()
    res: dict[str, Any] = {"weights_mb": sum(v.numel() * v.element_size() for v in sd.values()) / MB}

    def timed(key: str, fn: Callable, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        res[key] = time.perf_counter() - t0
        return out

    edges = timed("edge_arrays_s", edge_arrays, topo, sd)
    res["nodes"], res["edges"] = edges.num_nodes, edges.num_edges
    g = timed("graph_tool_build_s", graph_from_arrays, edges)
    d_gt = timed("graph_tool_degree_s", weighted_degree, g)
    e_gt = timed("graph_tool_eigenvector_s", eigenvector_centrality, g)
    del g
    d = timed("arrays_degree_s", weighted_degree_arrays, edges)
    e = timed("arrays_eigenvector_s", eigenvector_centrality_arrays, edges)
    del edges
    bg = timed("blocks_build_s", block_graph, topo, sd)
    d_b = timed("blocks_degree_s", weighted_degree_blocks, bg)
    e_b = timed("blocks_eigenvector_s", eigenvector_centrality_blocks, bg)
    res["graph_tool_total_s"] = (res["edge_arrays_s"] + res["graph_tool_build_s"] + res["graph_tool_degree_s"]
                                 + res["graph_tool_eigenvector_s"])
    res["arrays_total_s"] = res["edge_arrays_s"] + res["arrays_degree_s"] + res["arrays_eigenvector_s"]
    res["blocks_total_s"] = res["blocks_build_s"] + res["blocks_degree_s"] + res["blocks_eigenvector_s"]
    res["max_abs_diff_degree"] = float(abs(d - d_gt).max())
    res["max_abs_diff_eigenvector"] = float(abs(e - e_gt).max())
    res["max_abs_diff_degree_blocks"] = float(abs(d_b - d_gt).max())
    res["max_abs_diff_eigenvector_blocks"] = float(abs(e_b - e_gt).max())
    res["signature_auto_s"] = _median_time(lambda: snapshot_signature(topo, sd, backend="auto"), 3)
    print(f"vgg11-imagenet: graph-tool {res['graph_tool_total_s']:.2f} s, arrays {res['arrays_total_s']:.2f} s, "
          f"blocks {res['blocks_total_s']:.2f} s", flush=True)
    return res


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2f}"


def write(rows: list[dict], big: dict, machine: dict, batches: int | None) -> str:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "graph_stage.json").write_text(json.dumps(
        {"machine": machine, "epoch_batches": batches, "zoo": rows, "vgg11_imagenet": big}, indent=2))
    timing = "timed in full" if batches is None else f"timed on {batches} batches and scaled"
    lines = [
        "# Graph stage vs. training (paper Q3)", "",
        f"Machine: {machine['cpu_count']} CPU cores (`os.cpu_count()`), torch threads {machine['torch_threads']}, "
        f"{machine['platform']}, torch {machine['torch']}, CPU only.",
        f"One training epoch = {EPOCH_IMAGES:,} random 1x28x28 images, batch {BATCH}, SGD ({timing}). "
        f"Graph stage = rolled graph + weighted degree + eigenvector centrality + 10 aggregators "
        f"(`snapshot_signature`), median of {REPEATS}; `auto` is what the training loop runs. "
        "Default width, untrained weights. Target: graph stage <= 1% of an epoch.", "",
        "| model | nodes | edges | rolled MB | epoch (s) | graph stage, auto (ms) | % of epoch | graph-tool (ms) "
        "| % of epoch | arrays (ms) | blocks (ms) | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ok = "met" if r["graph_auto_s"] <= 0.01 * r["epoch_s"] else "missed"
        lines.append(
            f"| {r['model']} | {r['nodes']:,} | {r['edges']:,} | {r['rolled_mb']:.1f} | {r['epoch_s']:.2f} | "
            f"{_ms(r['graph_auto_s'])} | {_pct(r['graph_auto_s'], r['epoch_s'])} | {_ms(r['graph_graph_tool_s'])} | "
            f"{_pct(r['graph_graph_tool_s'], r['epoch_s'])} | {_ms(r['graph_arrays_s'])} | "
            f"{_ms(r['graph_blocks_s'])} | {ok} |")
    lines += [
        "", f"## Rolled vs. unrolled graph (budget {DEFAULT_BUDGET / MB:.0f} MB; 24 bytes an edge, 8 a node)", "",
        "| model | rolled nodes | rolled edges | rolled MB | rolled graph stage (ms) | unrolled nodes "
        "| unrolled edges | unrolled MB | unrolled degree |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        un = f"{_ms(r['unrolled_s'])} ms" if r["unrolled_s"] is not None else r["unrolled_status"]
        lines.append(
            f"| {r['model']} | {r['nodes']:,} | {r['edges']:,} | {r['rolled_mb']:.1f} | {_ms(r['graph_auto_s'])} | "
            f"{r['unrolled_nodes']:,} | {r['unrolled_edges']:,} | {r['unrolled_mb']:.0f} | {un} |")
    b = big
    ok = "met" if b["blocks_total_s"] <= 1.0 else "missed"
    lines += [
        "", "## VGG-11, ImageNet size (torchvision `vgg11(num_classes=10)`), random weights", "",
        f"{b['nodes']:,} nodes, {b['edges']:,} edges, {b['weights_mb']:.0f} MB of weights. "
        f"Target: build + degree + eigenvector <= 1 s ({ok} by the blocks path).", "",
        "| step | graph-tool path (s) | arrays path, scipy CSR (s) | blocks path (s) |", "|---|---:|---:|---:|",
        f"| edges from the weights | {b['edge_arrays_s']:.2f} | {b['edge_arrays_s']:.2f} | {b['blocks_build_s']:.2f} |",
        f"| graph-tool graph build | {b['graph_tool_build_s']:.2f} | - | - |",
        f"| weighted degree | {b['graph_tool_degree_s']:.3f} | {b['arrays_degree_s']:.3f} | "
        f"{b['blocks_degree_s']:.3f} |",
        f"| eigenvector (Lanczos; the arrays path builds its CSR here) | {b['graph_tool_eigenvector_s']:.2f} | "
        f"{b['arrays_eigenvector_s']:.2f} | {b['blocks_eigenvector_s']:.2f} |",
        f"| **total** | **{b['graph_tool_total_s']:.2f}** | **{b['arrays_total_s']:.2f}** | "
        f"**{b['blocks_total_s']:.2f}** |", "",
        f"Whole snapshot signature with `backend=auto` (blocks here): {b['signature_auto_s']:.2f} s (median of 3).",
        f"Agreement with graph-tool: arrays max |degree diff| = {b['max_abs_diff_degree']:.1e}, max |eigenvector "
        f"diff| = {b['max_abs_diff_eigenvector']:.1e}; blocks {b['max_abs_diff_degree_blocks']:.1e} and "
        f"{b['max_abs_diff_eigenvector_blocks']:.1e}.",
    ]
    text = "\n".join(lines) + "\n"
    (OUT / "graph_stage.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epoch-batches", type=int, default=None,
                        help="time this many batches and scale to the epoch (default: the whole epoch)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}
    zoo = zoo_rows(args.epoch_batches)
    print(write(zoo, vgg11_imagenet(), machine, args.epoch_batches))


if __name__ == "__main__":
    main()
