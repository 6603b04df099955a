"""Graph-stage benchmark (paper Q3): graph stage vs. one training epoch, rolled vs. unrolled, and a
VGG-11-ImageNet-size rolled graph end to end.  Run: `make bench`.

Writes bench/results/graph_stage.md and bench/results/graph_stage.json.
One training epoch = 10,000 images of the embedded default (1 x 28 x 28, batch 128, SGD); it is timed
on `TRAIN_BATCHES` batches and scaled to the full epoch.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from epochgraph.baselines import OverBudget, unrolled_degree, unrolled_size
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
from epochgraph.signature import snapshot_signature
from epochgraph.topology import TopologyBuilder

OUT = Path(__file__).parent / "results"
MODELS = ["lenet", "alexnet", "vgg11", "resnet20", "resnet32", "resnet44"]
EPOCH_IMAGES, BATCH, TRAIN_BATCHES = 10_000, 128, 8
REPEATS = 5


def _median_time(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def epoch_time(model: nn.Module) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))
    model.train()

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up
    per_batch = _median_time(step, TRAIN_BATCHES)
    return per_batch * (EPOCH_IMAGES / BATCH)


def zoo_rows() -> list[dict]:
    rows = []
    for name in MODELS:
        model = build_model(name, in_channels=1, image_size=28)
        topo, sd = model.topology(), model.state_dict()
        edges = edge_arrays(topo, sd)
        row = {"model": name, "nodes": edges.num_nodes, "edges": edges.num_edges,
               "epoch_s": epoch_time(model)}
        for backend in ("graph_tool", "arrays", "blocks", "auto"):
            snapshot_signature(topo, sd, backend=backend)  # warm-up (imports)
            row[f"graph_{backend}_s"] = _median_time(
                lambda t=topo, w=sd, b=backend: snapshot_signature(t, w, backend=b))
        u_nodes, u_edges = unrolled_size(model, 1, 28)
        row.update(unrolled_nodes=u_nodes, unrolled_edges=u_edges, unrolled_mb=u_edges * 24 / 2**20)
        try:
            row["unrolled_s"] = _median_time(lambda m=model: unrolled_degree(m, 1, 28), 3)
            row["unrolled_status"] = "ok"
        except OverBudget as err:
            row["unrolled_s"] = None
            row["unrolled_status"] = str(err)
        rows.append(row)
        print(f"{name:9s} epoch {row['epoch_s']:.2f}s  graph-tool {row['graph_graph_tool_s'] * 1e3:.1f}ms  "
              f"blocks {row['graph_blocks_s'] * 1e3:.1f}ms  unrolled {row['unrolled_status']}", flush=True)
    return rows


def vgg11_imagenet() -> dict:
    """torchvision's vgg11(num_classes=10): 11k nodes, ~20M edges in the rolled graph."""
    from torchvision.models import vgg11

    model = vgg11(num_classes=10)
    t = TopologyBuilder(3)
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    for k, i in enumerate(convs, start=1):
        t.add(f"conv{k}", model.features[i].out_channels, "conv", f"features.{i}.weight", bias=f"features.{i}.bias")
    for k, (i, kind, spatial) in enumerate([(0, "flatten", 49), (3, "linear", 1), (6, "linear", 1)], start=1):
        t.add(f"fc{k}", model.classifier[i].out_features, kind, f"classifier.{i}.weight",
              bias=f"classifier.{i}.bias", spatial=spatial)
    topo, sd = t.build(), model.state_dict()
    weights_mb = sum(v.numel() * v.element_size() for v in sd.values()) / 2**20
    res: dict = {"weights_mb": weights_mb}
    def timed(key: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        res[key] = time.perf_counter() - t0
        return out

    edges = timed("edge_arrays_s", edge_arrays, topo, sd)
    res["nodes"], res["edges"] = edges.num_nodes, edges.num_edges
    g = timed("graph_tool_build_s", graph_from_arrays, edges)
    d_gt = timed("graph_tool_degree_s", weighted_degree, g)
    e_gt = timed("graph_tool_eigenvector_s", eigenvector_centrality, g)
    d = timed("arrays_degree_s", weighted_degree_arrays, edges)
    e = timed("arrays_eigenvector_s", eigenvector_centrality_arrays, edges)
    bg = timed("blocks_build_s", block_graph, topo, sd)
    d_b = timed("blocks_degree_s", weighted_degree_blocks, bg)
    e_b = timed("blocks_eigenvector_s", eigenvector_centrality_blocks, bg)
    res["blocks_total_s"] = res["blocks_build_s"] + res["blocks_degree_s"] + res["blocks_eigenvector_s"]
    res["max_abs_diff_degree_blocks"] = float(abs(d_b - d_gt).max())
    res["max_abs_diff_eigenvector_blocks"] = float(abs(e_b - e_gt).max())
    res["max_abs_diff_degree"] = float(abs(d - d_gt).max())
    res["max_abs_diff_eigenvector"] = float(abs(e - e_gt).max())
    res["graph_tool_total_s"] = res["edge_arrays_s"] + res["graph_tool_build_s"] + res["graph_tool_degree_s"] \
        + res["graph_tool_eigenvector_s"]
    res["arrays_total_s"] = res["edge_arrays_s"] + res["arrays_degree_s"] + res["arrays_eigenvector_s"]
    return res


def write(rows: list[dict], big: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}
    (OUT / "graph_stage.json").write_text(json.dumps({"machine": machine, "zoo": rows, "vgg11_imagenet": big},
                                                     indent=2))
    lines = [
        "# Graph stage vs. training (paper Q3)", "",
        f"Machine: {machine['cpu_count']} cores, torch threads {machine['torch_threads']}, {machine['platform']}.",
        f"One training epoch = {EPOCH_IMAGES} images 1x28x28, batch {BATCH}, SGD (timed on {TRAIN_BATCHES} "
        "batches, scaled). Graph stage = rolled graph + degree + eigenvector + 10 aggregators, median of "
        f"{REPEATS}. Default width, untrained weights.", "",
        "| model | nodes | edges | epoch (s) | graph stage, graph-tool (ms) | % of epoch | arrays (ms) "
        "| % of epoch | blocks (ms) | % of epoch | auto (ms) | % of epoch | unrolled nodes | unrolled edges "
        "| unrolled MB | unrolled degree |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        un = f"{r['unrolled_s'] * 1e3:.1f} ms" if r["unrolled_s"] is not None else r["unrolled_status"]
        lines.append(
            f"| {r['model']} | {r['nodes']:,} | {r['edges']:,} | {r['epoch_s']:.2f} | "
            f"{r['graph_graph_tool_s'] * 1e3:.1f} | {100 * r['graph_graph_tool_s'] / r['epoch_s']:.2f} | "
            f"{r['graph_arrays_s'] * 1e3:.1f} | {100 * r['graph_arrays_s'] / r['epoch_s']:.2f} | "
            f"{r['graph_blocks_s'] * 1e3:.1f} | {100 * r['graph_blocks_s'] / r['epoch_s']:.2f} | "
            f"{r['graph_auto_s'] * 1e3:.1f} | {100 * r['graph_auto_s'] / r['epoch_s']:.2f} | "
            f"{r['unrolled_nodes']:,} | {r['unrolled_edges']:,} | {r['unrolled_mb']:.0f} | {un} |")
    b = big
    lines += [
        "", "## VGG-11, ImageNet size (torchvision `vgg11(num_classes=10)`), random weights", "",
        f"{b['nodes']:,} nodes, {b['edges']:,} edges, {b['weights_mb']:.0f} MB of weights.", "",
        "| step | graph-tool path (s) | arrays path (s) | blocks path (s) |", "|---|---|---|---|",
        f"| edges from the weights | {b['edge_arrays_s']:.2f} | {b['edge_arrays_s']:.2f} | {b['blocks_build_s']:.2f} |",
        f"| graph build | {b['graph_tool_build_s']:.2f} | - | - |",
        f"| weighted degree | {b['graph_tool_degree_s']:.3f} | {b['arrays_degree_s']:.3f} | "
        f"{b['blocks_degree_s']:.3f} |",
        f"| eigenvector (Lanczos) | {b['graph_tool_eigenvector_s']:.2f} | {b['arrays_eigenvector_s']:.2f} | "
        f"{b['blocks_eigenvector_s']:.2f} |",
        f"| **total** | **{b['graph_tool_total_s']:.2f}** | **{b['arrays_total_s']:.2f}** | "
        f"**{b['blocks_total_s']:.2f}** |", "",
        f"Paths agree with graph-tool: arrays max |degree diff| = {b['max_abs_diff_degree']:.2e}, max "
        f"|eigenvector diff| = {b['max_abs_diff_eigenvector']:.2e}; blocks {b['max_abs_diff_degree_blocks']:.2e} "
        f"and {b['max_abs_diff_eigenvector_blocks']:.2e}.",
    ]
    (OUT / "graph_stage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    zoo = zoo_rows()
    write(zoo, vgg11_imagenet())
