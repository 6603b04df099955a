"""Graph-stage benchmark (paper Q3): graph stage vs. one training epoch, rolled vs. unrolled graph, and
a VGG-11-ImageNet-size rolled graph end to end.  Run: `make bench` (or `.venv/bin/python bench/graph_bench.py`).

Writes bench/results/graph_stage.md and bench/results/graph_stage.json.

* One training epoch = 10,000 random 1 x 28 x 28 images, batch 128, SGD with momentum, on the CPU,
  timed in full (``--epoch-batches N`` times N batches and scales instead, for a quick look).
* Graph stage = rolled graph from the state_dict + weighted degree + eigenvector centrality + the 10
  aggregators, median of `REPEATS`, for each engine. The graph-tool engine is timed as a training
  runs it: one `SignatureEngine` whose persistent graph is built at the first epoch ("first epoch")
  and given new weights at every later one ("per epoch", two snapshots alternating); arrays and
  blocks rebuild everything every epoch. ``auto`` is what the training loop runs. Targets: graph
  stage <= 1% of the epoch; VGG-11-ImageNet size, persistent graph-tool path <= 2 s per epoch after
  the first.
* Pictures = one `graph/epoch_NNN.png` (`draw_rolled_graph`) per drawn epoch; target <= 1 s for
  LeNet and ResNet-20.
* Choosing the engine by size: persistent graph-tool vs blocks per epoch on the largest zoo graphs
  (VGG-16 at width 2, AlexNet at width 3) and the VGG-11-ImageNet size, which sets `AUTO_BLOCKS_EDGES`.
* Unrolled graph = `unrolled_degree` under the default 2 GiB budget; a model over it is reported,
  not built.
* torchvision's networks (``model=torchvision``, stem adapted to 3 x 32 x 32): the rolled graph traced
  from the model, the graph stage's engine (``auto``) per epoch against a training epoch on 32 x 32
  images (``--only torchvision`` measures these rows alone and keeps the others from the last run).
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

from epochgraph.graph.baselines import DEFAULT_BUDGET, OverBudget, unrolled_degree, unrolled_plan
from epochgraph.graph.centrality import (
    eigenvector_centrality_arrays,
    eigenvector_centrality_blocks,
    leading_eigenvector,
    weighted_degree_arrays,
    weighted_degree_blocks,
    weighted_degree_persistent,
)
from epochgraph.graph.graph_stage import draw_epoch
from epochgraph.graph.rolled_graph import PersistentRolledGraph, block_graph, edge_arrays
from epochgraph.graph.signature import AUTO_BLOCKS_EDGES, SignatureEngine, one_blas_thread, resolve_backend
from epochgraph.graph.topology import Topology
from epochgraph.graph.tracing import topology_of
from epochgraph.models import build_from_config, build_model

OUT = Path(__file__).parent / "results"
MODELS = ["lenet", "alexnet", "vgg11", "resnet20", "resnet32", "resnet44"]
EPOCH_IMAGES, BATCH = 10_000, 128
REPEATS = 5
MB = 2**20


def _median_times(fn: Callable[[], Any], repeats: int = REPEATS) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``fn``. CPU = `time.process_time` (all threads of this process): on
    cores shared with other work it stays near the time the work would take alone, where wall time
    grows with the load."""
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return statistics.median(walls), statistics.median(cpus)


def _median_time(fn: Callable[[], Any], repeats: int = REPEATS) -> float:
    return _median_times(fn, repeats)[0]


def epoch_time(model: nn.Module, batches: int | None, image: tuple[int, ...] = (1, 28, 28)) -> float:
    """Seconds of one training epoch (all of it, or ``batches`` batches scaled to the epoch)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(EPOCH_IMAGES, *image), torch.randint(0, 10, (EPOCH_IMAGES,))
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


def next_snapshot(state_dict: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """Another snapshot of the same model (every weight moved a little), for the per-epoch timings."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
            if v.is_floating_point() and not k.endswith("running_var") else v for k, v in state_dict.items()}


def persistent_times(topo: Topology, snapshots: list[dict], repeats: int = REPEATS) -> tuple[float, float, float]:
    """(first epoch, median later epoch, its CPU) seconds of the graph-tool engine as a training runs it."""
    engine = SignatureEngine(topo, backend="graph_tool")
    t0 = time.perf_counter()
    engine.signature(snapshots[0])
    first = time.perf_counter() - t0
    epoch = [0]

    def next_epoch() -> None:
        epoch[0] += 1
        engine.signature(snapshots[epoch[0] % 2])

    return first, *_median_times(next_epoch, repeats)


def picture_time(topo: Topology, sd: dict, tmp: Path) -> float:
    """Seconds to draw one epoch's picture (the graph-tool engine has computed its centralities)."""
    engine = SignatureEngine(topo, backend="graph_tool")
    engine.signature(sd)
    return _median_time(lambda: draw_epoch(engine, sd, tmp / "epoch.png", "bench"), 3)


def zoo_rows(batches: int | None) -> list[dict]:
    import tempfile

    rows = []
    for name in MODELS:
        model = build_model(name, in_channels=1, image_size=28)
        topo, sd = topology_of(model), model.state_dict()
        snapshots = [sd, next_snapshot(sd)]
        edges = edge_arrays(topo, sd)
        row: dict[str, Any] = {"model": name, "nodes": edges.num_nodes, "edges": edges.num_edges,
                               "rolled_mb": (edges.num_edges * 24 + edges.num_nodes * 8) / MB,
                               "auto_engine": resolve_backend(topo, "auto")}
        persistent_times(topo, snapshots, 1)  # warm-up (imports, first allocations)
        row["graph_tool_first_s"], row["graph_tool_epoch_s"], row["graph_tool_epoch_cpu_s"] = persistent_times(
            topo, snapshots)
        for backend in ("arrays", "blocks"):
            SignatureEngine(topo, backend=backend).signature(sd)  # warm-up
            row[f"{backend}_epoch_s"] = _median_time(
                lambda t=topo, w=sd, b=backend: SignatureEngine(t, backend=b).signature(w))
        row["graph_auto_s"] = row[f"{row['auto_engine']}_epoch_s"]
        with tempfile.TemporaryDirectory() as tmp:
            row["picture_s"] = picture_time(topo, sd, Path(tmp))
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
        print(f"{name:9s} epoch {row['epoch_s']:.2f} s  graph stage (auto = {row['auto_engine']}) "
              f"{row['graph_auto_s'] * 1e3:.1f} ms = {100 * row['graph_share_auto']:.2f}%  "
              f"picture {row['picture_s']:.2f} s  unrolled {row['unrolled_status']}", flush=True)
    return rows


def size_rows() -> list[dict]:
    """Persistent graph-tool vs blocks per epoch on the largest zoo graphs (random weights)."""
    rows = []
    for name, width in (("vgg16", 2), ("alexnet", 3)):
        torch.manual_seed(0)
        model = build_model(name, in_channels=3, image_size=32, width=width)
        topo, sd = topology_of(model), model.state_dict()
        snapshots = [sd, next_snapshot(sd)]
        first, later, later_cpu = persistent_times(topo, snapshots, 3)
        blocks, blocks_cpu = _median_times(lambda t=topo, w=sd: SignatureEngine(t, backend="blocks").signature(w), 3)
        rows.append({"model": f"{name} width {width} (3x32x32)", "edges": topo.num_edges,
            "graph_tool_first_s": first, "graph_tool_epoch_s": later, "blocks_epoch_s": blocks,
            "graph_tool_epoch_cpu_s": later_cpu, "blocks_epoch_cpu_s": blocks_cpu,
            "auto_engine": resolve_backend(topo, "auto")})
        print(f"{rows[-1]['model']}: graph-tool {later:.2f} s/epoch (first {first:.2f} s), blocks {blocks:.2f} s",
              flush=True)
        del model, topo, sd, snapshots
    return rows


TORCHVISION = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "densenet121", "efficientnet_b0"]


def torchvision_rows(batches: int | None) -> list[dict]:
    """torchvision's networks as ``model=torchvision`` builds them for 3 x 32 x 32 images: the traced
    rolled graph, the ``auto`` engine per epoch (as a training runs it) against a training epoch."""
    rows = []
    for arch in TORCHVISION:
        torch.manual_seed(0)
        model = build_from_config({"name": "torchvision", "arch": arch}, in_channels=3, image_size=32,
                                  num_classes=10)
        t0 = time.perf_counter()
        topo = topology_of(model)
        trace_s = time.perf_counter() - t0
        sd = model.state_dict()
        snapshots = [sd, next_snapshot(sd)]
        auto = resolve_backend(topo, "auto")
        engine = SignatureEngine(topo, backend=auto)
        t0 = time.perf_counter()
        engine.signature(snapshots[0])
        first = time.perf_counter() - t0
        counter = [0]

        def next_epoch(e=engine, snaps=snapshots, n=counter) -> None:
            n[0] += 1
            e.signature(snaps[n[0] % 2])

        later, later_cpu = _median_times(next_epoch, 3)
        row = {"model": arch, "nodes": topo.num_nodes, "edges": topo.num_edges, "groups": len(topo.groups),
               "auto_engine": auto, "trace_s": trace_s, "graph_first_s": first, "graph_epoch_s": later,
               "graph_epoch_cpu_s": later_cpu, "epoch_s": epoch_time(model, batches, (3, 32, 32))}
        rows.append(row)
        print(f"{arch:16s} {row['nodes']:,} nodes {row['edges']:,} edges ({auto}): graph stage {later:.2f} s "
              f"per epoch (first {first:.2f} s), training epoch {row['epoch_s']:.1f} s", flush=True)
        del model, engine, snapshots, sd
    return rows


def vgg11_imagenet() -> dict:
    """torchvision's vgg11(num_classes=10), random weights: 11k nodes, ~20M edges in the rolled graph."""
    from torchvision.models import vgg11

    torch.manual_seed(0)
    model = vgg11(num_classes=10)
    topo, sd = topology_of(model, torch.zeros(2, 3, 224, 224)), model.state_dict()
    later_sd = next_snapshot(sd)
    res: dict[str, Any] = {"weights_mb": sum(v.numel() * v.element_size() for v in sd.values()) / MB}

    def timed(key: str, fn: Callable, *args: Any) -> Any:
        t0, cpu0 = time.perf_counter(), time.process_time()
        out = fn(*args)
        res[key] = time.perf_counter() - t0
        res[key.removesuffix("_s") + "_cpu_s"] = time.process_time() - cpu0
        return out

    # the persistent graph-tool path, step by step: epoch 1 builds, epochs 2-4 update (median)
    with one_blas_thread():
        graph = timed("persistent_build_s", PersistentRolledGraph, topo, sd)
        res["nodes"], res["edges"] = graph.num_nodes, graph.num_edges
        d0 = timed("persistent_first_degree_s", weighted_degree_persistent, graph)
        timed("persistent_first_adjacency_s", graph.adjacency)
        e0 = timed("persistent_first_lanczos_s", leading_eigenvector, graph.adjacency())
        steps: dict[str, list[float]] = {k: [] for k in ("update", "degree", "adjacency", "lanczos")}
        steps_cpu: dict[str, list[float]] = {k: [] for k in steps}
        for i in range(3):
            snapshot = later_sd if i % 2 == 0 else sd
            for key, fn in (("update", lambda g=graph, s=snapshot: g.update(s)),
                            ("degree", lambda g=graph: weighted_degree_persistent(g)),
                            ("adjacency", graph.adjacency),
                            ("lanczos", lambda g=graph: leading_eigenvector(g.adjacency()))):
                t0, cpu0 = time.perf_counter(), time.process_time()
                fn()
                steps[key].append(time.perf_counter() - t0)
                steps_cpu[key].append(time.process_time() - cpu0)
        for key, values in steps.items():
            res[f"persistent_{key}_s"] = statistics.median(values)
            res[f"persistent_{key}_cpu_s"] = statistics.median(steps_cpu[key])
    res["persistent_first_s"] = (res["persistent_build_s"] + res["persistent_first_degree_s"]
                                 + res["persistent_first_adjacency_s"] + res["persistent_first_lanczos_s"])
    res["persistent_epoch_s"] = sum(res[f"persistent_{k}_s"] for k in steps)
    res["persistent_epoch_cpu_s"] = sum(res[f"persistent_{k}_cpu_s"] for k in steps)
    del graph
    edges = timed("edge_arrays_s", edge_arrays, topo, sd)
    d = timed("arrays_degree_s", weighted_degree_arrays, edges)
    e = timed("arrays_eigenvector_s", eigenvector_centrality_arrays, edges)
    del edges
    bg = timed("blocks_build_s", block_graph, topo, sd)
    d_b = timed("blocks_degree_s", weighted_degree_blocks, bg)
    e_b = timed("blocks_eigenvector_s", eigenvector_centrality_blocks, bg)
    del bg
    res["arrays_total_s"] = res["edge_arrays_s"] + res["arrays_degree_s"] + res["arrays_eigenvector_s"]
    res["blocks_total_s"] = res["blocks_build_s"] + res["blocks_degree_s"] + res["blocks_eigenvector_s"]
    res["blocks_total_cpu_s"] = (res["blocks_build_cpu_s"] + res["blocks_degree_cpu_s"]
                                 + res["blocks_eigenvector_cpu_s"])
    res["max_abs_diff_degree"] = float(abs(d - d0).max())
    res["max_abs_diff_eigenvector"] = float(abs(e - e0).max())
    res["max_abs_diff_degree_blocks"] = float(abs(d_b - d0).max())
    res["max_abs_diff_eigenvector_blocks"] = float(abs(e_b - e0).max())
    res["auto_engine"] = resolve_backend(topo, "auto")
    print(f"vgg11-imagenet: persistent graph-tool {res['persistent_epoch_s']:.2f} s/epoch "
          f"(first {res['persistent_first_s']:.2f} s), arrays {res['arrays_total_s']:.2f} s, "
          f"blocks {res['blocks_total_s']:.2f} s", flush=True)
    return res


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2f}"


def write(rows: list[dict], sizes: list[dict], big: dict, machine: dict, batches: int | None,
          tv: list[dict] | None = None, tv_machine: dict | None = None) -> str:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "graph_stage.json").write_text(json.dumps(
        {"machine": machine, "epoch_batches": batches, "zoo": rows, "sizes": sizes, "vgg11_imagenet": big,
         "torchvision": tv or [], "torchvision_machine": tv_machine}, indent=2))
    timing = "timed in full" if batches is None else f"timed on {batches} batches and scaled"
    lines = [
        "# Graph stage vs. training (paper Q3)", "",
        f"Machine: {machine['cpu_count']} CPU cores (`os.cpu_count()`), torch threads {machine['torch_threads']}, "
        f"{machine['platform']}, torch {machine['torch']}, CPU only; load average {machine['load_average']} at "
        "the start (the cores are shared, so every time here is an upper bound).",
        f"One training epoch = {EPOCH_IMAGES:,} random 1x28x28 images, batch {BATCH}, SGD ({timing}). "
        "Graph stage = rolled graph + weighted degree + eigenvector centrality + 10 aggregators, median of "
        f"{REPEATS}. The graph-tool engine runs as in a training: one persistent `graph_tool.Graph`, built at the "
        "first epoch, new weights written in place at every later one (two snapshots alternating); arrays and "
        "blocks rebuild everything every epoch. `auto` is what the training loop runs. Default width, untrained "
        "weights. Target: graph stage <= 1% of an epoch; a picture <= 1 s.", "",
        "| model | nodes | edges | epoch (s) | auto | graph-tool, per epoch (ms) | % of epoch | CPU (ms) "
        "| graph-tool, first epoch (ms) | arrays (ms) | % of epoch | blocks (ms) | % of epoch | picture (s) | target |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ok = "met" if r["graph_auto_s"] <= 0.01 * r["epoch_s"] else "missed"
        lines.append(
            f"| {r['model']} | {r['nodes']:,} | {r['edges']:,} | {r['epoch_s']:.2f} | {r['auto_engine']} | "
            f"{_ms(r['graph_tool_epoch_s'])} | {_pct(r['graph_tool_epoch_s'], r['epoch_s'])} | "
            f"{_ms(r['graph_tool_epoch_cpu_s'])} | {_ms(r['graph_tool_first_s'])} | {_ms(r['arrays_epoch_s'])} | "
            f"{_pct(r['arrays_epoch_s'], r['epoch_s'])} | "
            f"{_ms(r['blocks_epoch_s'])} | {_pct(r['blocks_epoch_s'], r['epoch_s'])} | {r['picture_s']:.2f} | {ok} |")
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
    ok = "met" if b["persistent_epoch_s"] <= 2.0 else "missed"
    ok_cpu = "met" if b["persistent_epoch_cpu_s"] <= 2.0 else "missed"
    lines += [
        "", "## Choosing the engine by size", "",
        f"`auto` uses the persistent graph-tool engine up to {AUTO_BLOCKS_EDGES:,} edges and the blocks engine "
        "above. Random weights, seconds per epoch (wall; CPU = process time of all threads):", "",
        "| graph | edges | graph-tool, per epoch | CPU | graph-tool, first epoch | blocks, per epoch | CPU | auto |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    big_row = {"model": "VGG-11, ImageNet size", "edges": b["edges"], "graph_tool_epoch_s": b["persistent_epoch_s"],
               "graph_tool_first_s": b["persistent_first_s"], "blocks_epoch_s": b["blocks_total_s"],
               "graph_tool_epoch_cpu_s": b["persistent_epoch_cpu_s"], "blocks_epoch_cpu_s": b["blocks_total_cpu_s"],
               "auto_engine": b["auto_engine"]}
    for r in [*sizes, big_row]:
        lines.append(f"| {r['model']} | {r['edges']:,} | {r['graph_tool_epoch_s']:.2f} | "
                     f"{r['graph_tool_epoch_cpu_s']:.2f} | {r['graph_tool_first_s']:.2f} | {r['blocks_epoch_s']:.2f} | "
                     f"{r['blocks_epoch_cpu_s']:.2f} | {r['auto_engine']} |")
    lines += [
        "", "## VGG-11, ImageNet size (torchvision `vgg11(num_classes=10)`), random weights", "",
        f"{b['nodes']:,} nodes, {b['edges']:,} edges, {b['weights_mb']:.0f} MB of weights. "
        f"Target: the persistent graph-tool path <= 2 s per epoch after the first: {ok} in wall time "
        f"({b['persistent_epoch_s']:.2f} s), {ok_cpu} in CPU time ({b['persistent_epoch_cpu_s']:.2f} s; "
        f"the blocks path {b['blocks_total_cpu_s']:.2f} s).", "",
        "| step | persistent graph-tool, first epoch (s) | persistent graph-tool, later epochs (s) "
        "| arrays path, scipy CSR (s) | blocks path (s) |", "|---|---:|---:|---:|---:|",
        f"| graph from the weights (first: build; later: norms written in place) | {b['persistent_build_s']:.2f} | "
        f"{b['persistent_update_s']:.2f} | {b['edge_arrays_s']:.2f} | {b['blocks_build_s']:.2f} |",
        f"| weighted degree | {b['persistent_first_degree_s']:.3f} | {b['persistent_degree_s']:.3f} | "
        f"{b['arrays_degree_s']:.3f} | {b['blocks_degree_s']:.3f} |",
        f"| adjacency (graph-tool's; later: values rewritten in place) | {b['persistent_first_adjacency_s']:.2f} | "
        f"{b['persistent_adjacency_s']:.2f} | - | - |",
        f"| eigenvector (Lanczos; the arrays path builds its CSR here) | {b['persistent_first_lanczos_s']:.2f} | "
        f"{b['persistent_lanczos_s']:.2f} | {b['arrays_eigenvector_s']:.2f} | {b['blocks_eigenvector_s']:.2f} |",
        f"| **total** | **{b['persistent_first_s']:.2f}** | **{b['persistent_epoch_s']:.2f}** | "
        f"**{b['arrays_total_s']:.2f}** | **{b['blocks_total_s']:.2f}** |", "",
        f"Agreement with the persistent graph-tool path (epoch 1): arrays max |degree diff| = "
        f"{b['max_abs_diff_degree']:.1e}, max |eigenvector diff| = {b['max_abs_diff_eigenvector']:.1e}; blocks "
        f"{b['max_abs_diff_degree_blocks']:.1e} and {b['max_abs_diff_eigenvector_blocks']:.1e}.",
    ]
    if tv:
        m = tv_machine or machine
        lines += [
            "", "## torchvision's networks (`model=torchvision`, 3 x 32 x 32, the stem adapted)", "",
            f"The rolled graph traced from the model (torch.fx). Measured {m.get('date', '')} on "
            f"{m['cpu_count']} CPU cores, load average {m['load_average']} at the start (shared cores: upper "
            f"bounds). Training epoch = {EPOCH_IMAGES:,} random 3x32x32 images, batch {BATCH}, SGD, timed on "
            f"{m.get('epoch_batches') or 'all'} batches and scaled; graph stage = the `auto` engine as a training "
            "runs it (median of 3 epochs after the first). No GPU here: the GPU epoch is not measured.", "",
            "| model | node groups | nodes | edges | auto | trace (s) | graph stage, first epoch (s) "
            "| graph stage, per epoch (s) | CPU (s) | training epoch (s) | % of epoch |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in tv:
            lines.append(f"| {r['model']} | {r['groups']} | {r['nodes']:,} | {r['edges']:,} | {r['auto_engine']} | "
                         f"{r['trace_s']:.2f} | {r['graph_first_s']:.2f} | {r['graph_epoch_s']:.2f} | "
                         f"{r['graph_epoch_cpu_s']:.2f} | {r['epoch_s']:.1f} | "
                         f"{_pct(r['graph_epoch_s'], r['epoch_s'])} |")
    text = "\n".join(lines) + "\n"
    (OUT / "graph_stage.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epoch-batches", type=int, default=None,
                        help="time this many batches and scale to the epoch (default: the whole epoch)")
    parser.add_argument("--only", choices=["torchvision"], default=None,
                        help="measure only these rows; the others are kept from the last run's graph_stage.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "load_average": f"{os.getloadavg()[0]:.1f}", "date": time.strftime("%Y-%m-%d"),
               "epoch_batches": args.epoch_batches}
    if args.only == "torchvision":
        last = json.loads((OUT / "graph_stage.json").read_text())
        tv = torchvision_rows(args.epoch_batches)
        print(write(last["zoo"], last["sizes"], last["vgg11_imagenet"], last["machine"], last["epoch_batches"],
                    tv, machine))
        return
    zoo = zoo_rows(args.epoch_batches)
    sizes = size_rows()
    big = vgg11_imagenet()
    tv = torchvision_rows(args.epoch_batches)
    print(write(zoo, sizes, big, machine, args.epoch_batches, tv, machine))


if __name__ == "__main__":
    main()
