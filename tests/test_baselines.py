"""The last-layer baselines and the unrolled graph, the latter against an explicit edge-by-edge
construction on tiny models."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from epochgraph.graph.baselines import (
    OverBudget,
    UnrolledUnsupported,
    b_what,
    b_wl,
    b_wprime,
    unrolled_degree,
    unrolled_plan,
    unrolled_size,
)
from epochgraph.graph.rolled_graph import BN_EPS
from epochgraph.graph.signature import aggregate
from epochgraph.graph.topology import Topology, TopologyBuilder
from epochgraph.graph.tracing import UntraceableModel, topology_of
from epochgraph.models import build_model


def test_last_layer_baselines():
    model = build_model("lenet", in_channels=1, image_size=28)
    topo, sd = topology_of(model), model.state_dict()
    flat = np.concatenate([sd["fc3.weight"].double().reshape(-1).numpy(), sd["fc3.bias"].double().numpy()])
    assert flat.size == 84 * 10 + 10
    assert np.array_equal(b_wl(topo, sd), flat)
    q = np.sort(flat)
    n = len(q)
    quart = [q[0], *(q[int(p * (n - 1))] + (p * (n - 1) % 1) * (q[int(p * (n - 1)) + 1] - q[int(p * (n - 1))])
                     for p in (0.25, 0.5, 0.75)), q[-1]]
    assert np.allclose(b_what(topo, sd), [flat.mean(), ((flat - flat.mean()) ** 2).mean(), *quart])
    assert np.allclose(b_wprime(topo, sd), aggregate(flat))
    sd["fc3.bias"][0] = float("nan")
    assert np.isnan(b_what(topo, sd)).all() and np.isnan(b_wprime(topo, sd)).all()


# --- explicit unrolled construction ---------------------------------------------------------------

def _conv_mults(conv: nn.Conv2d, in_hw: tuple[int, int], out_hw: tuple[int, int], scale: np.ndarray):
    """Every multiplication of ``conv``: (out ch, out y, out x, in ch, in y, in x, |w| * scale)."""
    k = conv.weight.detach().double().abs().numpy()
    (sy, sx), (py, px) = conv.stride, conv.padding
    for o in range(k.shape[0]):
        for yo in range(out_hw[0]):
            for xo in range(out_hw[1]):
                for c in range(k.shape[1]):
                    for dy in range(k.shape[2]):
                        for dx in range(k.shape[3]):
                            yi, xi = yo * sy - py + dy, xo * sx - px + dx
                            if 0 <= yi < in_hw[0] and 0 <= xi < in_hw[1]:
                                yield o, yo, xo, c, yi, xi, k[o, c, dy, dx] * scale[o]


class _Explicit:
    """Degrees accumulated edge by edge; an endpoint may be several nodes (a position two pooling
    windows read)."""

    def __init__(self, n: int) -> None:
        self.deg = np.zeros(n)
        self.edges = 0

    def add(self, u: int | list[int], v: int | list[int], w: float) -> None:
        for a in u if isinstance(u, list) else [u]:
            self.deg[a] += w
        for b in v if isinstance(v, list) else [v]:
            self.deg[b] += w
        self.edges += 1

    def conv(self, conv, in_hw, out_hw, src: Callable, dst: Callable, scale=None) -> None:
        scale = np.ones(conv.out_channels) if scale is None else scale
        for o, yo, xo, c, yi, xi, w in _conv_mults(conv, in_hw, out_hw, scale):
            self.add(src(c, yi, xi), dst(o, yo, xo), w)


class Sequential(nn.Module):
    """1x12x12 -> conv 3x3 stride 2 (5x5) -> max pool 2 (2x2, drops row/col 4) -> conv 2x2 pad 1 (3x3)
    -> adaptive max pool 2 (overlapping windows {0,1}, {1,2}) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 2, 3, stride=2)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(2, 3, 2, padding=1)
        self.pool2 = nn.AdaptiveMaxPool2d(2)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))

    def topology(self) -> Topology:
        t = TopologyBuilder(1)
        t.add("conv1", 2, "conv", "conv1.weight")
        t.add("conv2", 3, "conv", "conv2.weight")
        t.add("fc", 4, "flatten", "fc.weight", spatial=4)
        return t.build()


def _explicit_sequential(m: Sequential) -> _Explicit:
    inp, c1 = 0, 144
    dropped = [(o, y, x) for o in range(2) for y in range(5) for x in range(5) if y == 4 or x == 4]
    c1_dropped = c1 + 8
    c2 = c1_dropped + len(dropped)
    fc = c2 + 12
    g = _Explicit(fc + 4)

    def conv1_out(o, y, x):
        return c1 + o * 4 + (y // 2) * 2 + x // 2 if y < 4 and x < 4 else c1_dropped + dropped.index((o, y, x))

    g.conv(m.conv1, (12, 12), (5, 5), lambda c, y, x: inp + y * 12 + x, conv1_out)
    windows = {0: [0], 1: [0, 1], 2: [1]}  # adaptive pooling of 3 onto 2

    def conv2_out(o, y, x):
        return [c2 + o * 4 + i * 2 + j for i in windows[y] for j in windows[x]]

    g.conv(m.conv2, (2, 2), (3, 3), lambda c, y, x: c1 + c * 4 + y * 2 + x, conv2_out)
    w = m.fc.weight.detach().double().abs().numpy()
    for o in range(4):
        for f in range(12):
            g.add(c2 + f, fc + o, w[o, f])
    return g


class Residual(nn.Module):
    """2x6x6 -> stem conv+BN -> identity block -> stride-2 block with a 1x1 projection -> identity
    block -> global average pool -> linear; BatchNorm statistics made non-trivial."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)

        def conv(cin, cout, k=3, stride=1):
            return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)

        self.stem, self.a, self.b = conv(2, 3), conv(3, 3), conv(3, 3)
        self.c, self.d, self.sc = conv(3, 4, stride=2), conv(4, 4), conv(3, 4, k=1, stride=2)
        self.e, self.f = conv(4, 4), conv(4, 4)
        self.bns = nn.ModuleDict({n: nn.BatchNorm2d(3 if n in {"stem", "a", "b"} else 4)
                                  for n in ("stem", "a", "b", "c", "d", "sc", "e", "f")})
        with torch.no_grad():
            for bn in self.bns.values():
                bn.weight.uniform_(-2, 2)
                bn.running_var.uniform_(0.2, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        bn = self.bns
        x = torch.relu(bn["stem"](self.stem(x)))
        x = torch.relu(bn["b"](self.b(torch.relu(bn["a"](self.a(x))))) + x)
        x = torch.relu(bn["d"](self.d(torch.relu(bn["c"](self.c(x))))) + bn["sc"](self.sc(x)))
        x = torch.relu(bn["f"](self.f(torch.relu(bn["e"](self.e(x))))) + x)
        return self.fc(self.pool(x).flatten(1))

    def topology(self) -> Topology:
        t = TopologyBuilder(2)
        t.add("stem", 3, "conv", "stem.weight", bn="bns.stem")
        t.add("a", 3, "conv", "a.weight", bn="bns.a")
        t.add("b", 3, "conv", "b.weight", bn="bns.b")
        t.connect("stem", "b", "identity")
        t.add("c", 4, "conv", "c.weight", bn="bns.c")
        t.add("d", 4, "conv", "d.weight", bn="bns.d")
        t.connect("b", "d", "conv", "sc.weight", bn="bns.sc")
        t.add("e", 4, "conv", "e.weight", bn="bns.e")
        t.add("f", 4, "conv", "f.weight", bn="bns.f")
        t.connect("d", "f", "identity")
        t.add("fc", 2, "linear", "fc.weight", bias="fc.bias")
        return t.build()


def _explicit_residual(m: Residual) -> _Explicit:
    def scale(name):
        bn = m.bns[name]
        return (bn.weight.detach().double().abs() / torch.sqrt(bn.running_var.double() + BN_EPS)).numpy()

    start = {"input": 0, "stem": 72, "a": 180, "b": 288, "c": 396, "d": 432, "e": 468, "f": 504, "fc": 508}
    g = _Explicit(510)

    def at(group, side):
        return lambda c, y, x: start[group] + c * side * side + y * side + x

    def pooled(group):
        return lambda c, y, x: start[group] + c  # the global pool merges every position of a channel

    g.conv(m.stem, (6, 6), (6, 6), at("input", 6), at("stem", 6), scale("stem"))
    g.conv(m.a, (6, 6), (6, 6), at("stem", 6), at("a", 6), scale("a"))
    g.conv(m.b, (6, 6), (6, 6), at("a", 6), at("b", 6), scale("b"))
    for c in range(3):
        for y in range(6):
            for x in range(6):
                g.add(at("stem", 6)(c, y, x), at("b", 6)(c, y, x), 1.0)
    g.conv(m.c, (6, 6), (3, 3), at("b", 6), at("c", 3), scale("c"))
    g.conv(m.d, (3, 3), (3, 3), at("c", 3), at("d", 3), scale("d"))
    g.conv(m.sc, (6, 6), (3, 3), at("b", 6), at("d", 3), scale("sc"))
    g.conv(m.e, (3, 3), (3, 3), at("d", 3), at("e", 3), scale("e"))
    g.conv(m.f, (3, 3), (3, 3), at("e", 3), pooled("f"), scale("f"))
    for c in range(4):
        for y in range(3):
            for x in range(3):
                g.add(at("d", 3)(c, y, x), pooled("f")(c, y, x), 1.0)
    w = m.fc.weight.detach().double().abs().numpy()
    for o in range(2):
        for i in range(4):
            g.add(start["f"] + i, start["fc"] + o, w[o, i])
    return g


def test_unrolled_degree_of_a_sequential_model_matches_an_explicit_construction():
    model = Sequential()
    want = _explicit_sequential(model)
    nodes, edges = unrolled_size(model, 1, 12)
    assert (nodes, edges) == (len(want.deg), want.edges)
    assert np.allclose(unrolled_degree(model, 1, 12), want.deg, rtol=1e-12)


def test_unrolled_degree_with_shortcuts_and_batchnorm_matches_an_explicit_construction():
    model = Residual()
    want = _explicit_residual(model)
    assert unrolled_size(model, 2, 6) == (len(want.deg), want.edges)
    got = unrolled_degree(model, 2, 6)
    assert np.allclose(got, want.deg, rtol=1e-12)
    assert model.training  # the dummy forward pass leaves the mode as it was


def test_over_budget_is_reported_before_anything_is_built():
    model = build_model("lenet", in_channels=1, image_size=28)
    plan = unrolled_plan(model, 1, 28)
    assert plan.num_nodes > 2000 and plan.num_edges > 400_000
    assert plan.bytes_needed == plan.num_edges * 24 + plan.num_nodes * 8
    mb = math.floor(plan.bytes_needed / 2**20 + 0.5)
    with pytest.raises(OverBudget, match=rf"^over memory budget: needs {mb} MB, budget 1 MB$"):
        unrolled_degree(model, 1, 28, max_bytes=2**20)
    assert unrolled_degree(model, 1, 28, max_bytes=plan.bytes_needed).shape == (plan.num_nodes,)


@pytest.mark.parametrize("name", ["lenet", "alexnet", "resnet20"])
def test_zoo_unrolled_degrees_are_finite_and_sum_over_every_edge(name):
    model = build_model(name, in_channels=1, image_size=28, width=0.5)
    deg = unrolled_degree(model, 1, 28)
    assert deg.shape == (unrolled_size(model, 1, 28)[0],) and np.all(np.isfinite(deg)) and deg.min() >= 0


def test_unsupported_wiring_is_named():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x.flatten(1)))

    t = TopologyBuilder(4)
    t.add("fc", 4, "linear", "fc.weight")
    with pytest.raises(UnrolledUnsupported, match="runs twice"):
        unrolled_degree(Twice(), 1, 2, topology=t.build())
    with pytest.raises(UntraceableModel, match="'fc' runs twice"):
        topology_of(Twice(), torch.zeros(2, 1, 2, 2))
