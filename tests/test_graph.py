"""Rolled graph (S1), centralities (S2) and signatures (S3), checked against hand computations,
networkx and scipy."""

import math

import networkx as nx
import numpy as np
import pytest
import torch
from scipy import stats

from epochgraph.errors import EpochgraphError
from epochgraph.graph.centrality import (
    eigenvector_centrality,
    eigenvector_centrality_arrays,
    eigenvector_centrality_blocks,
    weighted_degree,
    weighted_degree_arrays,
    weighted_degree_blocks,
)
from epochgraph.graph.rolled_graph import BN_EPS, block_graph, edge_arrays, rolled_graph
from epochgraph.graph.signature import AGGREGATORS, TemporalSignature, aggregate, snapshot_signature
from epochgraph.graph.topology import TopologyBuilder
from epochgraph.models import build_model


def _edges_dict(e):
    return {(int(s), int(d)): float(w) for s, d, w in zip(e.src, e.dst, e.weight)}


def test_conv_flatten_linear_edge_weights_by_hand():
    t = TopologyBuilder(2)
    t.add("c", 3, "conv", "c.w")
    t.add("f", 2, "flatten", "f.w", spatial=4)
    t.add("o", 2, "linear", "o.w")
    topo = t.build()
    g = torch.Generator().manual_seed(0)
    sd = {"c.w": torch.randn(3, 2, 3, 3, generator=g), "f.w": torch.randn(2, 12, generator=g),
          "o.w": torch.randn(2, 2, generator=g)}
    e = edge_arrays(topo, sd)
    assert e.num_nodes == 2 + 3 + 2 + 2 and e.num_edges == 6 + 6 + 4
    edges = _edges_dict(e)
    # input channel 1 -> filter 2 of conv c
    assert edges[(1, 2 + 2)] == pytest.approx(float(sd["c.w"][2, 1].norm()))
    # conv filter 1 -> flatten neuron 0: features 4..7 of f.w
    assert edges[(2 + 1, 5 + 0)] == pytest.approx(float(sd["f.w"][0, 4:8].norm()))
    # linear: |W[o, i]|
    assert edges[(5 + 1, 7 + 0)] == pytest.approx(abs(float(sd["o.w"][0, 1])))


def test_batchnorm_is_folded_and_shortcuts_become_edges():
    model = build_model("resnet20", in_channels=3, image_size=32, width=0.25)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(-2, 2)
                m.running_var.uniform_(0.5, 3)
    sd, topo = model.state_dict(), model.topology()
    e = edge_arrays(topo, sd)
    off = topo.offsets()
    edges = _edges_dict(e)
    # stem conv: in-channel 2 -> filter 1, scaled by |gamma_1| / sqrt(var_1 + eps)
    scale = abs(float(sd["bn1.weight"][1])) / math.sqrt(float(sd["bn1.running_var"][1]) + BN_EPS)
    assert edges[(2, off["conv1"] + 1)] == pytest.approx(float(sd["conv1.weight"][1, 2].norm()) * scale)
    # identity shortcut of block 0: conv1 channel 3 -> block0.conv2 channel 3, weight 1
    assert edges[(off["conv1"] + 3, off["block0.conv2"] + 3)] == 1.0
    # projection shortcut of block 3 (first block of stage 2): 1x1 conv norm times its BN scale
    bn = "blocks.3.shortcut.1"
    s = abs(float(sd[f"{bn}.weight"][0])) / math.sqrt(float(sd[f"{bn}.running_var"][0]) + BN_EPS)
    w = abs(float(sd["blocks.3.shortcut.0.weight"][0, 1, 0, 0])) * s
    # the same pair also has no other edge (block input -> block output only via the shortcut)
    assert edges[(off["block2.conv2"] + 1, off["block3.conv2"] + 0)] == pytest.approx(w)


def _nx_eigenvector(e):
    g = nx.Graph()
    g.add_nodes_from(range(e.num_nodes))
    g.add_weighted_edges_from(zip(e.src.tolist(), e.dst.tolist(), e.weight.tolist()))
    ref = nx.eigenvector_centrality_numpy(g, weight="weight")
    r = np.array([ref[i] for i in range(e.num_nodes)])
    r = r / np.linalg.norm(r)
    return r if r.sum() > 0 else -r


def _chain(sizes, seed):
    t = TopologyBuilder(sizes[0])
    for i, n in enumerate(sizes[1:]):
        t.add(f"l{i}", n, "linear", f"l{i}.w")
    rng = torch.Generator().manual_seed(seed)
    sd = {f"l{i}.w": torch.randn(n, m, generator=rng) for i, (m, n) in enumerate(zip(sizes, sizes[1:]))}
    return t.build(), sd


@pytest.mark.parametrize("seed", range(3))
def test_eigenvector_matches_networkx_on_bipartite_chains(seed):
    topo, sd = _chain([4, 7, 5, 3], seed)
    e = edge_arrays(topo, sd)
    ref = _nx_eigenvector(e)
    got = eigenvector_centrality(rolled_graph(topo, sd))
    assert np.abs(got - ref).max() < 1e-6
    assert np.abs(eigenvector_centrality_arrays(e) - ref).max() < 1e-6
    assert np.linalg.norm(got) == pytest.approx(1.0) and got.min() >= -1e-12


def test_graph_tool_power_iteration_is_not_what_we_use_on_bipartite_graphs():
    # the trap: on a bipartite graph the +/-lambda pair makes plain power iteration oscillate
    from graph_tool.centrality import eigenvector as gt_eigenvector

    topo, sd = _chain([6, 6], 1)
    g = rolled_graph(topo, sd)
    ref = _nx_eigenvector(edge_arrays(topo, sd))
    _, x = gt_eigenvector(g, weight=g.edge_properties["weight"], max_iter=51)
    x = np.asarray(x.a) / np.linalg.norm(x.a)
    assert np.abs(eigenvector_centrality(g) - ref).max() < 1e-6
    assert np.abs(x - ref).max() > 1e-3


def test_eigenvector_matches_networkx_on_random_graphs_and_a_residual_block():
    rng = np.random.default_rng(0)
    for _ in range(3):
        g = nx.gnp_random_graph(30, 0.2, seed=int(rng.integers(1 << 30)))
        g = g.subgraph(max(nx.connected_components(g), key=len)).copy()
        g = nx.convert_node_labels_to_integers(g)
        for u, v in g.edges:
            g[u][v]["weight"] = float(rng.uniform(0.1, 2))
        src, dst = map(np.array, zip(*g.edges))
        w = np.array([g[u][v]["weight"] for u, v in g.edges])
        from epochgraph.graph.rolled_graph import EdgeArrays, graph_from_arrays

        e = EdgeArrays(src, dst, w, g.number_of_nodes(), np.zeros(g.number_of_nodes(), int),
                       np.zeros(g.number_of_nodes()))
        assert np.abs(eigenvector_centrality(graph_from_arrays(e)) - _nx_eigenvector(e)).max() < 1e-6
    model = build_model("resnet20", in_channels=1, image_size=28, width=0.25)
    e = edge_arrays(model.topology(), model.state_dict())
    assert np.abs(eigenvector_centrality_arrays(e) - _nx_eigenvector(e)).max() < 1e-6


@pytest.mark.parametrize("name", ["lenet", "alexnet", "vgg11", "resnet20"])
def test_graph_tool_and_array_paths_agree_on_the_zoo(name):
    model = build_model(name, in_channels=3, image_size=32, width=0.5)
    topo, sd = model.topology(), model.state_dict()
    e = edge_arrays(topo, sd)
    g = rolled_graph(topo, sd)
    assert g.num_vertices() == e.num_nodes and g.num_edges() == e.num_edges
    assert np.allclose(weighted_degree(g), weighted_degree_arrays(e), rtol=1e-12)
    assert np.allclose(eigenvector_centrality(g), eigenvector_centrality_arrays(e), atol=1e-9)
    blocks = block_graph(topo, sd)
    assert np.allclose(weighted_degree_blocks(blocks), weighted_degree(g), rtol=1e-12)
    assert np.allclose(eigenvector_centrality_blocks(blocks), eigenvector_centrality(g), atol=1e-9)
    a = snapshot_signature(topo, sd, backend="graph_tool")
    assert all(np.isfinite(v) for v in a.values())
    for backend in ("arrays", "blocks"):
        b = snapshot_signature(topo, sd, backend=backend)
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9) for k in a)


def test_aggregators_match_numpy_and_scipy():
    x = np.random.default_rng(1).gamma(2.0, size=101)
    got = aggregate(x)
    want = [np.median(x), x.mean(), x.std(), stats.skew(x), stats.kurtosis(x)]
    assert np.allclose(got, want)
    assert list(aggregate(np.full(5, 2.0))) == [2.0, 2.0, 0.0, 0.0, 0.0]


def test_nonfinite_weights_are_flagged_not_raised():
    model = build_model("lenet", in_channels=1, image_size=28)
    sd = model.state_dict()
    sd["fc1.weight"][0, 0] = float("nan")
    sig = snapshot_signature(model.topology(), sd)
    assert sig["sig/nonfinite"] == 1.0
    assert all(math.isnan(v) for k, v in sig.items() if k != "sig/nonfinite")
    ts = TemporalSignature()
    ts.append(sig)
    assert ts.nonfinite


def test_temporal_variants_on_a_hand_worked_example():
    ts = TemporalSignature(["degree"])
    for v in (1.0, 4.0, 7.0):
        ts.append({f"sig/degree/{a}": v * (i + 1) for i, a in enumerate(AGGREGATORS)})
    def col(m):
        return m[:, 0]
    assert list(col(ts.matrix(3, "plain"))) == [1, 4, 7]
    assert np.allclose(col(ts.matrix(3, "wavg")), [1, (1 + 8) / 3, (1 + 8 + 21) / 6])
    assert np.allclose(col(ts.matrix(3, "expavg", alpha=0.5)), [1, 2.5, 4.75])
    assert ts.vector(2).shape == (10,) and ts.feature_names(2)[5] == "sig/degree/median@2"
    rebuilt = TemporalSignature.from_metric_history(
        {f"sig/degree/{a}": [v * (i + 1) for v in (1.0, 4.0, 7.0)] for i, a in enumerate(AGGREGATORS)},
        ["degree"])
    assert np.array_equal(rebuilt.vector(3, "wavg"), ts.vector(3, "wavg"))
    with pytest.raises(EpochgraphError, match="t=4 is outside the 3 recorded epochs"):
        ts.vector(4)
    with pytest.raises(EpochgraphError, match="unknown signature variant 'ema'"):
        ts.vector(2, "ema")
