"""Weighted degree and eigenvector centrality (S2): graph-tool, edge-array and block paths against
hand values and networkx."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from epochgraph.graph.centrality import (
    DENSE_MAX_NODES,
    eigenvector_centrality,
    eigenvector_centrality_arrays,
    eigenvector_centrality_blocks,
    leading_eigenvector,
    weighted_degree,
    weighted_degree_arrays,
    weighted_degree_blocks,
)
from epochgraph.graph.rolled_graph import EdgeArrays, block_graph, edge_arrays, graph_from_arrays, rolled_graph
from epochgraph.graph.topology import TopologyBuilder
from epochgraph.graph.tracing import topology_of
from epochgraph.models import build_model
from tests.test_rolled_graph import residual


def _arrays(src, dst, w, n) -> EdgeArrays:
    return EdgeArrays(np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64), np.asarray(w, float), n,
                      np.zeros(n, dtype=int), np.zeros(n))


def _nx_reference(e: EdgeArrays) -> np.ndarray:
    """networkx's eigenvector centrality, scaled to unit L2 norm with a positive sum."""
    g = nx.Graph()
    g.add_nodes_from(range(e.num_nodes))
    for s, d, w in zip(e.src.tolist(), e.dst.tolist(), e.weight.tolist()):
        # parallel edges (a shortcut beside a conv) add up, as in the adjacency matrix
        g.add_edge(s, d, weight=g[s][d]["weight"] + w if g.has_edge(s, d) else w)
    ref = nx.eigenvector_centrality_numpy(g, weight="weight")
    r = np.array([ref[i] for i in range(e.num_nodes)])
    r /= np.linalg.norm(r)
    return r if r.sum() > 0 else -r


def _chain(sizes: list[int], seed: int):
    t = TopologyBuilder(sizes[0])
    for i, n in enumerate(sizes[1:]):
        t.add(f"l{i}", n, "linear", f"l{i}.w")
    gen = torch.Generator().manual_seed(seed)
    sd = {f"l{i}.w": torch.randn(n, m, generator=gen) for i, (m, n) in enumerate(zip(sizes, sizes[1:]))}
    return t.build(), sd


def _all_paths(e: EdgeArrays, topo=None, sd=None) -> dict[str, np.ndarray]:
    out = {"graph_tool": eigenvector_centrality(graph_from_arrays(e)), "arrays": eigenvector_centrality_arrays(e)}
    if topo is not None:
        out["blocks"] = eigenvector_centrality_blocks(block_graph(topo, sd))
    return out


def test_weighted_degree_by_hand():
    e = _arrays([0, 1, 1, 2], [1, 2, 3, 3], [2.0, 3.0, 0.5, 5.0], 5)  # vertex 4 is isolated
    want = [2.0, 5.5, 8.0, 5.5, 0.0]
    assert weighted_degree(graph_from_arrays(e)).tolist() == want
    assert weighted_degree_arrays(e).tolist() == want


def test_weighted_degree_paths_agree_with_shortcuts():
    topo, sd = residual()
    e = edge_arrays(topo, sd)
    ref = np.zeros(e.num_nodes)
    for s, d, w in zip(e.src, e.dst, e.weight):
        ref[s] += w
        ref[d] += w
    assert np.allclose(weighted_degree(rolled_graph(topo, sd)), ref, rtol=1e-12)
    assert np.allclose(weighted_degree_arrays(e), ref, rtol=1e-12)
    assert np.allclose(weighted_degree_blocks(block_graph(topo, sd)), ref, rtol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_eigenvector_on_random_graphs_matches_networkx(seed):
    rng = np.random.default_rng(seed)
    g = nx.gnp_random_graph(40, 0.15, seed=seed)
    g = nx.convert_node_labels_to_integers(g.subgraph(max(nx.connected_components(g), key=len)))
    src, dst = map(np.array, zip(*g.edges))
    e = _arrays(src, dst, rng.uniform(0.1, 2.0, len(src)), g.number_of_nodes())
    ref = _nx_reference(e)
    for name, x in _all_paths(e).items():
        assert np.abs(x - ref).max() < 1e-6, name


@pytest.mark.parametrize("sizes", [[4, 7, 5, 3], [3, 3], [30, 300, 200, 10]])
def test_eigenvector_on_bipartite_chains_matches_networkx(sizes):
    # the last chain has more than DENSE_MAX_NODES nodes: the Lanczos path
    topo, sd = _chain(sizes, seed=len(sizes))
    e = edge_arrays(topo, sd)
    ref = _nx_reference(e)
    for name, x in _all_paths(e, topo, sd).items():
        assert np.abs(x - ref).max() < 1e-6, name
        assert np.linalg.norm(x) == pytest.approx(1.0) and x.min() >= -1e-9
    assert (sum(sizes) > DENSE_MAX_NODES) == (sizes[-1] == 10)


def test_eigenvector_on_residual_blocks_matches_networkx():
    topo, sd = residual()
    e = edge_arrays(topo, sd)
    ref = _nx_reference(e)
    for name, x in _all_paths(e, topo, sd).items():
        assert np.abs(x - ref).max() < 1e-6, name
    model = build_model("resnet20", in_channels=1, image_size=28, width=0.25)  # 9 residual blocks
    topo, sd = topology_of(model), model.state_dict()
    e = edge_arrays(topo, sd)
    ref = _nx_reference(e)
    for name, x in _all_paths(e, topo, sd).items():
        assert np.abs(x - ref).max() < 1e-6, name


def test_power_iteration_is_the_trap_on_bipartite_graphs():
    from graph_tool.centrality import eigenvector as power_iteration

    topo, sd = _chain([6, 6], 1)
    g = rolled_graph(topo, sd)
    ref = _nx_reference(edge_arrays(topo, sd))
    _, x = power_iteration(g, weight=g.edge_properties["weight"], max_iter=51)
    x = np.array(x.a) / np.linalg.norm(x.a)
    assert np.abs(x - ref).max() > 1e-3  # oscillates between the +lambda and -lambda directions
    assert np.abs(eigenvector_centrality(g) - ref).max() < 1e-6


def test_eigenvector_is_deterministic():
    topo, sd = _chain([30, 300, 200, 10], 5)
    e = edge_arrays(topo, sd)
    assert np.array_equal(eigenvector_centrality_arrays(e), eigenvector_centrality_arrays(e))
    g = rolled_graph(topo, sd)
    assert np.array_equal(eigenvector_centrality(g), eigenvector_centrality(g))


def test_zero_weight_and_empty_graphs_are_uniform():
    e = _arrays([0, 1], [1, 2], [0.0, 0.0], 4)
    assert np.allclose(eigenvector_centrality_arrays(e), 0.5)
    assert np.allclose(eigenvector_centrality(graph_from_arrays(e)), 0.5)
    assert eigenvector_centrality_arrays(_arrays([], [], [], 0)).shape == (0,)
    assert np.allclose(eigenvector_centrality_arrays(_arrays([], [], [], 3)), 1 / np.sqrt(3))


def test_disconnected_graph_has_a_defined_centrality():
    # a heavy triangle and a light edge: the light component gets 0
    e = _arrays([0, 1, 2, 3], [1, 2, 0, 4], [2.0, 2.0, 2.0, 1.0], 5)
    x = eigenvector_centrality_arrays(e)
    assert np.allclose(x, [1 / np.sqrt(3)] * 3 + [0, 0], atol=1e-12)
    # two identical components tie: the projection of the all-ones vector (equal shares)
    e = _arrays([0, 2], [1, 3], [1.0, 1.0], 4)
    assert np.allclose(eigenvector_centrality_arrays(e), 0.5)


def test_tied_components_give_the_same_answer_with_lanczos():
    topo, sd = _chain([120, 130], 2)  # 250 nodes; two copies = 500 nodes: Lanczos
    one = edge_arrays(topo, sd)
    n = one.num_nodes
    two = _arrays(np.concatenate([one.src, one.src + n]), np.concatenate([one.dst, one.dst + n]),
                  np.concatenate([one.weight, one.weight]), 2 * n)
    x = eigenvector_centrality_arrays(two)
    half = eigenvector_centrality_arrays(one) / np.sqrt(2)
    assert np.abs(x - np.concatenate([half, half])).max() < 1e-6


def test_leading_eigenvector_takes_the_largest_algebraic_eigenvalue():
    # a star: spectrum +sqrt(3), 0, 0, -sqrt(3); the Perron vector has the hub at 1/sqrt(2)
    e = _arrays([0, 0, 0], [1, 2, 3], [1.0, 1.0, 1.0], 4)
    x = eigenvector_centrality_arrays(e)
    assert x[0] == pytest.approx(1 / np.sqrt(2)) and np.allclose(x[1:], 1 / np.sqrt(6))
    assert leading_eigenvector(sp.csr_matrix(np.diag([3.0, -5.0]))).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("name", ["lenet", "alexnet", "vgg11", "resnet20"])
def test_graph_tool_and_fast_paths_agree_on_the_zoo(name):
    model = build_model(name, in_channels=3, image_size=32, width=0.5)
    topo, sd = topology_of(model), model.state_dict()
    e = edge_arrays(topo, sd)
    g = rolled_graph(topo, sd)
    bg = block_graph(topo, sd)
    d = weighted_degree(g)
    assert np.allclose(weighted_degree_arrays(e), d, rtol=1e-12)
    assert np.allclose(weighted_degree_blocks(bg), d, rtol=1e-12)
    x = eigenvector_centrality(g)
    assert np.abs(eigenvector_centrality_arrays(e) - x).max() < 1e-9
    assert np.abs(eigenvector_centrality_blocks(bg) - x).max() < 1e-9
