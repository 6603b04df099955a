"""The persistent graph-tool rolled graph (one per run, weights rewritten in place) against graphs built
from scratch, networkx, and the signatures computed the reference way on every zoo model."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from graph_tool.spectral import adjacency

from epochgraph.graph.centrality import (
    eigenvector_centrality,
    eigenvector_centrality_persistent,
    weighted_degree,
    weighted_degree_persistent,
)
from epochgraph.graph.graph_drawing import CentralityDistributions, _edge_budgets, draw_rolled_graph, strongest_edges
from epochgraph.graph.graph_stage import drawn_connections
from epochgraph.graph.rolled_graph import PersistentRolledGraph, edge_arrays, rolled_graph
from epochgraph.graph.signature import (
    AGGREGATORS,
    AUTO_BLOCKS_EDGES,
    SignatureEngine,
    aggregate,
    metric_name,
    resolve_backend,
    rolled_edge_count,
)
from epochgraph.graph.tracing import topology_of
from epochgraph.models import ZOO, build_model
from tests.test_centrality import _chain, _nx_reference
from tests.test_rolled_graph import residual


def _perturbed(sd: dict, seed: int) -> dict:
    """Another snapshot of the same model: every float tensor changed (BatchNorm statistics included)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if v.is_floating_point():
            noise = torch.randn(v.shape, generator=gen, dtype=v.dtype)
            out[k] = v.abs() + 0.5 + 0.1 * noise.abs() if k.endswith("running_var") else v + 0.3 * noise
        else:
            out[k] = v
    return out


def _same_graph(persistent: PersistentRolledGraph, fresh) -> None:
    w_p, w_f = persistent.weight, fresh.edge_properties["weight"]
    assert np.array_equal(persistent.graph.get_edges([w_p]), fresh.get_edges([w_f]))
    assert np.array_equal(persistent.graph.vertex_properties["bias"].a, fresh.vertex_properties["bias"].a)
    kept, built = persistent.adjacency(), sp.csr_matrix(adjacency(fresh, weight=w_f))
    assert np.array_equal(kept.indptr, built.indptr) and np.array_equal(kept.indices, built.indices)
    assert np.array_equal(kept.data, built.data)


@pytest.mark.parametrize("case", ["resnet20", "residual"])
def test_weights_written_in_place_equal_a_freshly_built_graph(case):
    if case == "residual":  # a conv and a projection shortcut join the same pairs: parallel edges
        topo, sd1 = residual()
    else:
        model = build_model("resnet20", in_channels=3, image_size=32, width=0.25)
        topo, sd1 = topology_of(model), model.state_dict()
    sd2, sd3 = _perturbed(sd1, 1), _perturbed(sd1, 2)
    graph = PersistentRolledGraph(topo, sd1)
    first = graph.graph
    graph.adjacency()
    for sd in (sd2, sd3):
        graph.update(sd)
        assert graph.graph is first  # the same graph object, not a rebuild
        _same_graph(graph, rolled_graph(topo, sd))
    # the new weights really differ from the first snapshot's (the comparison above is not vacuous)
    assert not np.allclose(graph.weight.a, edge_arrays(topo, sd1).weight)


def test_how_the_adjacency_values_are_rewritten():
    topo, sd = residual()
    graph = PersistentRolledGraph(topo, sd)
    graph.adjacency()
    # b -> c holds a conv edge and a projection edge per pair: a new matrix from graph-tool each time
    assert graph._block_writes is None and graph._entry_edge is None
    model = build_model("resnet20", in_channels=1, image_size=28, width=0.25)  # identity shortcuts too
    graph = PersistentRolledGraph(topology_of(model), model.state_dict())
    adj = graph.adjacency()
    assert graph._block_writes is not None
    # the entry-to-edge map (the fallback for other layouts) gives the same values
    entry_edge = graph._find_entry_edges(adj)
    assert entry_edge is not None and len(entry_edge) == 2 * graph.num_edges
    assert np.array_equal(graph.weight.a[entry_edge], adj.data)


@pytest.mark.parametrize("seed", range(3))
def test_persistent_centralities_match_networkx_after_updates(seed):
    topo, sd = _chain([4, 7, 5, 3], seed)
    graph = PersistentRolledGraph(topo, _perturbed(sd, 10 + seed))
    graph.adjacency()
    graph.update(sd)
    e = edge_arrays(topo, sd)
    degree = np.bincount(e.src, e.weight, e.num_nodes) + np.bincount(e.dst, e.weight, e.num_nodes)
    assert np.allclose(weighted_degree_persistent(graph), degree, rtol=1e-12)
    ref = _nx_reference(e)
    got = eigenvector_centrality_persistent(graph)
    assert np.abs(got - ref).max() < 1e-6 and got.min() >= -1e-12
    topo, sd = residual()
    graph = PersistentRolledGraph(topo, _perturbed(sd, 3))
    graph.adjacency()
    graph.update(sd)
    assert np.abs(eigenvector_centrality_persistent(graph) - _nx_reference(edge_arrays(topo, sd))).max() < 1e-6


def _reference_signature(topo, sd) -> dict[str, float]:
    """The signature as computed before the persistent graph: a graph-tool graph built from scratch."""
    g = rolled_graph(topo, sd)
    out = {}
    for name, values in (("degree", weighted_degree(g)), ("eigenvector", eigenvector_centrality(g))):
        out.update({metric_name(name, a): float(v) for a, v in zip(AGGREGATORS, aggregate(values))})
    return out


@pytest.mark.parametrize("name", sorted(ZOO))
def test_persistent_signatures_equal_the_reference_on_every_zoo_model(name):
    model = build_model(name, in_channels=3, image_size=32, width=0.5)
    topo = topology_of(model)
    engine = SignatureEngine(topo)
    assert engine.engine == "graph_tool"
    for sd in (model.state_dict(), _perturbed(model.state_dict(), 4)):
        sig = engine.signature(sd)
        ref = _reference_signature(topo, sd)
        assert all(sig[k] == pytest.approx(v, rel=1e-9, abs=1e-12) for k, v in ref.items()), name
        assert sig["sig/nonfinite"] == 0.0


def test_auto_uses_graph_tool_for_every_zoo_model_up_to_width_2():
    for name in ZOO:
        for channels, size in ((1, 28), (3, 32)):
            topo = topology_of(build_model(name, in_channels=channels, image_size=size, width=2))
            assert rolled_edge_count(topo) <= AUTO_BLOCKS_EDGES
            assert resolve_backend(topo, "auto") == "graph_tool"
    topo = topology_of(build_model("alexnet", in_channels=3, image_size=32, width=3))  # 14M edges
    assert resolve_backend(topo, "auto") == "blocks"
    assert rolled_edge_count(topo) == 14_076_480


def test_strongest_edges_share_the_budget_and_keep_the_strongest():
    assert _edge_budgets([6, 96, 1920, 10080, 840], 3000) == [6, 96, 1029, 1029, 840]
    assert sum(_edge_budgets([5, 5, 5], 100)) == 15
    w = np.array([[1.0, 5.0, 2.0], [4.0, 0.5, 3.0]])
    src, dst, strength = strongest_edges([(0, 3, w), (3, 6, np.ones(2))], max_edges=4)
    # both identity edges, and the 2 strongest of the matrix: 5 (row 0, col 1) and 4 (row 1, col 0)
    got = sorted(zip(src.tolist(), dst.tolist(), strength.tolist()))
    assert got == [(0, 4, 0.8), (1, 3, 1.0), (3, 6, 1.0), (4, 7, 1.0)]


def test_a_drawn_epoch_and_the_distributions_plot(tmp_path):
    model = build_model("resnet20", in_channels=1, image_size=28, width=0.25)
    engine = SignatureEngine(topology_of(model))
    engine.signature(model.state_dict())
    path = tmp_path / "epoch_001.png"
    drawn = draw_rolled_graph(engine.topology, drawn_connections(engine, model.state_dict()),
                              engine.vectors["eigenvector"], path, title="resnet20 epoch 1", max_edges=500)
    assert drawn == 500 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dist = CentralityDistributions(topology_of(model))
    for epoch in (1, 2):
        dist.add(epoch, engine.vectors)
    medians = dist.quantiles["degree"][0][:, 2]
    offsets = topology_of(model).offsets()
    first = topology_of(model).groups["conv1"]
    conv1 = engine.vectors["degree"][offsets["conv1"]:offsets["conv1"] + first]
    assert medians[list(topology_of(model).groups).index("conv1")] == pytest.approx(np.median(conv1))
    dist.plot(tmp_path / "dist.png")
    assert (tmp_path / "dist.png").stat().st_size > 10_000
