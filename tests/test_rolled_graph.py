"""The rolled graph (S1) on hand-made topologies, against edge weights computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from epochgraph.graph.rolled_graph import BN_EPS, block_graph, edge_arrays, rolled_graph
from epochgraph.graph.topology import Topology, TopologyBuilder
from epochgraph.graph.tracing import topology_of
from epochgraph.models import build_model


def _edges(e) -> dict[tuple[int, int], float]:
    return {(int(s), int(d)): float(w) for s, d, w in zip(e.src, e.dst, e.weight)}


def _norm(x: torch.Tensor) -> float:
    return math.sqrt(sum(float(v) ** 2 for v in x.reshape(-1)))


def _bn(sd: dict, prefix: str, n: int, gen: torch.Generator) -> None:
    sd[f"{prefix}.weight"] = torch.rand(n, generator=gen) * 4 - 2  # negative gammas too
    sd[f"{prefix}.bias"] = torch.randn(n, generator=gen)
    sd[f"{prefix}.running_mean"] = torch.randn(n, generator=gen)
    sd[f"{prefix}.running_var"] = torch.rand(n, generator=gen) * 3 + 0.1
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)


def _scale(sd: dict, prefix: str, j: int) -> float:
    return abs(float(sd[f"{prefix}.weight"][j])) / math.sqrt(float(sd[f"{prefix}.running_var"][j]) + BN_EPS)


def conv_flatten_linear() -> tuple[Topology, dict]:
    """input(2) -conv 3x3-> c(3) -flatten 2x2-> f(2) -linear-> o(2)."""
    t = TopologyBuilder(2)
    t.add("c", 3, "conv", "c.weight", bias="c.bias")
    t.add("f", 2, "flatten", "f.weight", bias="f.bias", spatial=4)
    t.add("o", 2, "linear", "o.weight")
    g = torch.Generator().manual_seed(0)
    sd = {"c.weight": torch.randn(3, 2, 3, 3, generator=g), "c.bias": torch.randn(3, generator=g),
          "f.weight": torch.randn(2, 12, generator=g), "f.bias": torch.randn(2, generator=g),
          "o.weight": torch.randn(2, 2, generator=g)}
    return t.build(), sd


def residual() -> tuple[Topology, dict]:
    """input(2) -> a(3, conv+BN) -> b(3, conv+BN) with identity a->b -> c(4, conv+BN) with a 1x1 projection
    b->c (conv+BN) -> fc(2, linear)."""
    t = TopologyBuilder(2)
    t.add("a", 3, "conv", "a.weight", bn="a_bn")
    t.add("b", 3, "conv", "b.weight", bn="b_bn")
    t.connect("a", "b", "identity")
    t.add("c", 4, "conv", "c.weight", bn="c_bn")
    t.connect("b", "c", "conv", "p.weight", bn="p_bn")
    t.add("fc", 2, "linear", "fc.weight", bias="fc.bias")
    g = torch.Generator().manual_seed(1)
    sd = {"a.weight": torch.randn(3, 2, 3, 3, generator=g), "b.weight": torch.randn(3, 3, 3, 3, generator=g),
          "c.weight": torch.randn(4, 3, 3, 3, generator=g), "p.weight": torch.randn(4, 3, 1, 1, generator=g),
          "fc.weight": torch.randn(2, 4, generator=g), "fc.bias": torch.randn(2, generator=g)}
    for prefix, n in [("a_bn", 3), ("b_bn", 3), ("c_bn", 4), ("p_bn", 4)]:
        _bn(sd, prefix, n, g)
    return t.build(), sd


def test_conv_norm_flatten_grouping_and_linear_by_hand():
    topo, sd = conv_flatten_linear()
    e = edge_arrays(topo, sd)
    assert e.num_nodes == 2 + 3 + 2 + 2
    assert e.num_edges == 2 * 3 + 3 * 2 + 2 * 2
    edges = _edges(e)
    assert len(edges) == e.num_edges  # no duplicate pair
    c, f, o = 2, 5, 7  # first node of each group
    for k in range(2):
        for j in range(3):
            assert edges[(k, c + j)] == pytest.approx(_norm(sd["c.weight"][j, k]), rel=1e-6)
    for k in range(3):  # flatten: features 4k .. 4k+3 belong to channel k
        for n in range(2):
            assert edges[(c + k, f + n)] == pytest.approx(_norm(sd["f.weight"][n, 4 * k:4 * k + 4]), rel=1e-6)
    for i in range(2):
        for n in range(2):
            assert edges[(f + i, o + n)] == pytest.approx(abs(float(sd["o.weight"][n, i])), rel=1e-6)
    assert list(e.group) == [0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert np.allclose(e.bias, [0, 0, *sd["c.bias"].tolist(), *sd["f.bias"].tolist(), 0, 0])


def test_identity_and_projection_shortcuts_with_batchnorm_folded():
    topo, sd = residual()
    e = edge_arrays(topo, sd)
    assert e.num_edges == 2 * 3 + 3 * 3 + 3 + 3 * 4 + 3 * 4 + 4 * 2
    edges = _edges(e)
    a, b, c, fc = 2, 5, 8, 12
    for j in range(3):
        for k in range(2):
            assert edges[(k, a + j)] == pytest.approx(_norm(sd["a.weight"][j, k]) * _scale(sd, "a_bn", j), rel=1e-6)
    # identity shortcut a -> b: weight 1 on the diagonal, on top of the conv edge of the same pair
    pairs = list(zip(e.src.tolist(), e.dst.tolist()))
    for i in range(3):
        idx = [q for q, p in enumerate(pairs) if p == (a + i, b + i)]
        weights = sorted(float(e.weight[q]) for q in idx)
        conv = _norm(sd["b.weight"][i, i]) * _scale(sd, "b_bn", i)
        assert weights == pytest.approx(sorted([1.0, conv]), rel=1e-6)
    # c is fed by the 3x3 conv from b and by the 1x1 projection from b: two edges per pair
    for j in range(4):
        for k in range(3):
            idx = [q for q, p in enumerate(pairs) if p == (b + k, c + j)]
            want = sorted([_norm(sd["c.weight"][j, k]) * _scale(sd, "c_bn", j),
                           abs(float(sd["p.weight"][j, k, 0, 0])) * _scale(sd, "p_bn", j)])
            assert sorted(float(e.weight[q]) for q in idx) == pytest.approx(want, rel=1e-6)
    assert edges[(c + 3, fc + 1)] == pytest.approx(abs(float(sd["fc.weight"][1, 3])), rel=1e-6)


def test_batchnorm_folded_into_the_bias_attribute():
    topo, sd = residual()
    e = edge_arrays(topo, sd)

    def shift(prefix: str, j: int) -> float:
        g, m = float(sd[f"{prefix}.weight"][j]), float(sd[f"{prefix}.running_mean"][j])
        return float(sd[f"{prefix}.bias"][j]) - g * m / math.sqrt(float(sd[f"{prefix}.running_var"][j]) + BN_EPS)

    want = [0.0, 0.0] + [shift("a_bn", j) for j in range(3)] + [shift("b_bn", j) for j in range(3)]
    want += [shift("c_bn", j) + shift("p_bn", j) for j in range(4)] + sd["fc.bias"].tolist()
    assert np.allclose(e.bias, want)
    # a layer with its own bias followed by a BatchNorm: gamma (b - mean) / sqrt(var + eps) + beta
    t = TopologyBuilder(1)
    t.add("c", 2, "conv", "c.weight", bias="c.bias", bn="bn")
    gen = torch.Generator().manual_seed(3)
    sd2 = {"c.weight": torch.randn(2, 1, 3, 3, generator=gen), "c.bias": torch.tensor([0.5, -1.0])}
    _bn(sd2, "bn", 2, gen)
    got = edge_arrays(t.build(), sd2).bias[1:]
    g, m, v, beta = (sd2[f"bn.{k}"] for k in ("weight", "running_mean", "running_var", "bias"))
    assert np.allclose(got, (g * (sd2["c.bias"] - m) / torch.sqrt(v + BN_EPS) + beta).tolist())


def test_graph_tool_graph_holds_the_same_edges_and_properties():
    topo, sd = residual()
    e = edge_arrays(topo, sd)
    g = rolled_graph(topo, sd)
    assert not g.is_directed()
    assert g.num_vertices() == e.num_nodes and g.num_edges() == e.num_edges
    got = sorted((min(int(s), int(t)), max(int(s), int(t)), round(w, 12)) for s, t, w in
                 g.get_edges([g.edge_properties["weight"]]))
    want = sorted((min(s, t), max(s, t), round(w, 12)) for s, t, w in
                  zip(e.src.tolist(), e.dst.tolist(), e.weight.tolist()))
    assert got == want
    assert g.edge_properties["weight"].value_type() == "double"
    assert list(g.vertex_properties["group"].a) == list(e.group)
    assert np.array_equal(np.asarray(g.vertex_properties["bias"].a), e.bias)


def test_block_graph_holds_the_same_adjacency():
    topo, sd = residual()
    e = edge_arrays(topo, sd)
    dense = np.zeros((e.num_nodes, e.num_nodes))
    np.add.at(dense, (e.src, e.dst), e.weight)
    np.add.at(dense, (e.dst, e.src), e.weight)
    bg = block_graph(topo, sd)
    eye = np.eye(e.num_nodes)
    assert np.allclose(np.column_stack([bg.matvec(eye[:, i]) for i in range(e.num_nodes)]), dense)


def test_float32_overflow_is_recomputed_in_float64():
    t = TopologyBuilder(1)
    t.add("c", 1, "conv", "c.weight")
    sd = {"c.weight": torch.full((1, 1, 2, 2), 1e20)}  # finite in float32; its squares are not
    e = edge_arrays(t.build(), sd)
    assert e.weight[0] == pytest.approx(2e20, rel=1e-6)


def test_lenet_node_and_edge_counts():
    model = build_model("lenet", in_channels=1, image_size=28)
    e = edge_arrays(topology_of(model), model.state_dict())
    assert e.num_nodes == 1 + 6 + 16 + 120 + 84 + 10
    assert e.num_edges == 1 * 6 + 6 * 16 + 16 * 120 + 120 * 84 + 84 * 10


def test_the_zoo_resnet_folds_batchnorm_and_its_shortcuts_become_edges():
    model = build_model("resnet20", in_channels=3, image_size=32, width=0.25)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(-2, 2)
                m.running_var.uniform_(0.5, 3)
    sd, topo = model.state_dict(), topology_of(model)
    e = edge_arrays(topo, sd)
    off = topo.offsets()
    edges = _edges(e)
    # stem conv: in-channel 2 -> filter 1, scaled by |gamma_1| / sqrt(var_1 + eps)
    scale = abs(float(sd["bn1.weight"][1])) / math.sqrt(float(sd["bn1.running_var"][1]) + BN_EPS)
    assert edges[(2, off["conv1"] + 1)] == pytest.approx(float(sd["conv1.weight"][1, 2].norm()) * scale)
    # identity shortcut of block 0: conv1 channel 3 -> block0.conv2 channel 3, weight 1
    assert edges[(off["conv1"] + 3, off["blocks.0.conv2"] + 3)] == 1.0
    # projection shortcut of block 3 (first block of stage 2): 1x1 conv norm times its BN scale
    bn = "blocks.3.shortcut.1"
    s = abs(float(sd[f"{bn}.weight"][0])) / math.sqrt(float(sd[f"{bn}.running_var"][0]) + BN_EPS)
    w = abs(float(sd["blocks.3.shortcut.0.weight"][0, 1, 0, 0])) * s
    # the same pair also has no other edge (block input -> block output only via the shortcut)
    assert edges[(off["blocks.2.conv2"] + 1, off["blocks.3.conv2"] + 0)] == pytest.approx(w)
