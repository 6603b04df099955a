"""The rolled graph traced from the model (torch.fx): the zoo's declared topologies, torchvision's
networks, every rule on a network written here, and the one-line error outside the rules."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from epochgraph.graph.rolled_graph import BN_EPS
from epochgraph.graph.signature import SignatureEngine, graph_signature, snapshot_signature
from epochgraph.graph.tracing import UntraceableModel, topology_of, trace_topology
from epochgraph.models import ZOO, build_model
from tests.declared_topologies import declared_topology


def _randomise_batch_norms(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data = torch.randn(m.num_features, generator=gen)
            m.bias.data = torch.randn(m.num_features, generator=gen)
            m.running_mean = torch.randn(m.num_features, generator=gen)
            m.running_var = torch.rand(m.num_features, generator=gen) + 0.1


def _layer_of(topology, group):
    """The module path of the layer that creates ``group`` (its first non-identity connection)."""
    conn = next(c for c in topology.connections if c.dst == group and c.kind != "identity")
    return conn.weight.removesuffix(".weight")


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize(("channels", "size", "width"), [(3, 32, 0.5), (1, 28, 0.25), (3, 28, 1.0)])
def test_traced_topology_equals_the_declared_one(name, channels, size, width):
    model = build_model(name, in_channels=channels, image_size=size, width=width)
    _randomise_batch_norms(model)
    declared, traced = declared_topology(model), trace_topology(model)
    rename = {g: ("input" if g == "input" else _layer_of(declared, g)) for g in declared.groups}
    assert [(rename[g], n) for g, n in declared.groups.items()] == list(traced.groups.items())
    assert [(rename[c.src], rename[c.dst], c.kind, c.weight, c.bn, c.spatial) for c in declared.connections] == \
           [(c.src, c.dst, c.kind, c.weight, c.bn, c.spatial) for c in traced.connections]
    assert {rename[g]: k for g, k in declared.biases.items()} == traced.biases
    sd = model.state_dict()
    want, got = snapshot_signature(declared, sd), snapshot_signature(traced, sd)
    assert want.keys() == got.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key


def test_tracing_leaves_the_model_as_it_was():
    model = build_model("resnet20", in_channels=3, image_size=32, width=0.25)
    model.train()
    model.blocks[0].bn1.eval()  # a mixed mode is kept too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    topology_of(model)
    assert model.training and not model.blocks[0].bn1.training and model.blocks[1].bn1.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert topology_of(model) is topology_of(model)  # traced once per model


class Rules(nn.Module):
    """One of every rule: a folded BatchNorm, a grouped conv with a projection shortcut, an identity
    shortcut, a squeeze-and-excitation gate, a channel concatenation read flattened by a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
        self.proj = nn.Conv2d(4, 4, 1, bias=False)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.branch = nn.Conv2d(4, 3, 1)
        self.gate1 = nn.Conv2d(3, 2, 1)
        self.gate2 = nn.Conv2d(2, 3, 1)
        self.fc = nn.Linear((4 + 3) * 4, 5)
        self.example_input_shape = (2, 8, 8)

    def forward(self, x):
        r = torch.relu(self.bn(self.stem(x)))
        a = self.grouped(r) + self.proj(r)  # projection shortcut: proj's edges go into grouped's nodes
        d = self.conv3(a) + a  # identity shortcut: grouped -> conv3, weight 1
        b = self.branch(F.relu(d))
        gate = torch.sigmoid(self.gate2(torch.relu(self.gate1(F.adaptive_avg_pool2d(b, 1)))))
        b = gate * b  # the gate first: the channels of b pass
        c = F.adaptive_avg_pool2d(torch.cat([d, b], dim=1), 2)
        return self.fc(torch.flatten(c, 1))


def test_every_rule_gives_the_weighted_degree_written_out_by_hand():
    torch.manual_seed(0)
    model = Rules()
    _randomise_batch_norms(model)
    model.double()  # float64 weights: the engine's norms and the ones below agree to rounding
    topo = topology_of(model)
    assert topo.groups == {"input": 2, "stem": 4, "grouped": 4, "conv3": 4, "branch": 3, "gate1": 2,
                           "gate2": 3, "fc": 5}
    sd = {k: v.double() for k, v in model.state_dict().items()}
    offset = dict(zip(topo.groups, np.cumsum([0, *topo.groups.values()])))
    edges: list[tuple[int, int, float]] = []  # (node, node, weight), written out rule by rule

    def node(group, i):
        return int(offset[group]) + i

    scale = sd["bn.weight"].abs() / torch.sqrt(sd["bn.running_var"] + BN_EPS)
    for f in range(4):
        for k in range(2):  # stem, BatchNorm folded
            edges.append((node("input", k), node("stem", f), float(sd["stem.weight"][f, k].norm() * scale[f])))
        group = f // 2  # grouped conv: filter f reads channels 2g, 2g + 1 of the stem
        for k in (2 * group, 2 * group + 1):
            edges.append((node("stem", k), node("grouped", f), float(sd["grouped.weight"][f, k - 2 * group].norm())))
        for k in range(4):  # the projection shortcut, into grouped's nodes
            edges.append((node("stem", k), node("grouped", f), float(sd["proj.weight"][f, k].norm())))
            edges.append((node("grouped", k), node("conv3", f), float(sd["conv3.weight"][f, k].norm())))
        edges.append((node("grouped", f), node("conv3", f), 1.0))  # identity shortcut
    for f in range(3):
        for k in range(4):
            edges.append((node("conv3", k), node("branch", f), float(sd["branch.weight"][f, k].norm())))
    for f in range(2):
        for k in range(3):
            edges.append((node("branch", k), node("gate1", f), float(sd["gate1.weight"][f, k].norm())))
            edges.append((node("gate1", f), node("gate2", k), float(sd["gate2.weight"][k, f].norm())))
    for o in range(5):  # fc reads cat(conv3, branch) pooled to 2x2: 4 features per channel
        for k in range(4):
            edges.append((node("conv3", k), node("fc", o), float(sd["fc.weight"][o, 4 * k:4 * k + 4].norm())))
        for k in range(3):
            lo = 16 + 4 * k
            edges.append((node("branch", k), node("fc", o), float(sd["fc.weight"][o, lo:lo + 4].norm())))
    want = np.zeros(topo.num_nodes)
    for u, v, w in edges:
        want[u] += w
        want[v] += w
    for backend in ("graph_tool", "arrays", "blocks"):
        engine = SignatureEngine(topo, ["degree"], backend)
        engine.signature(model.state_dict())
        np.testing.assert_allclose(engine.vectors["degree"], want, rtol=1e-9, err_msg=backend)
    assert topo.num_edges == len(edges)
    # nothing connects the gate's output: the gate multiplies, it does not feed the next layer
    assert not [c for c in topo.connections if c.src == "gate2"]


def test_graph_signature_keeps_one_graph_per_model_and_follows_its_weights():
    model = build_model("lenet", in_channels=1, image_size=28)
    first = graph_signature(model)
    with torch.no_grad():
        model.fc1.weight.mul_(3.0)
    second = graph_signature(model)
    assert first["sig/nonfinite"] == 0.0 and math.isfinite(second["sig/degree/mean"])
    assert second["sig/degree/mean"] > first["sig/degree/mean"]
    fresh = snapshot_signature(topology_of(model), model.state_dict())
    for key, value in fresh.items():
        assert second[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "densenet121",
                                  "efficientnet_b0"])
def test_torchvision_models_get_a_finite_signature(arch):
    import torchvision

    model = torchvision.models.get_model(arch, weights=None, num_classes=10)
    topo = topology_of(model, torch.zeros(2, 3, 32, 32))
    sig = graph_signature(model, torch.zeros(2, 3, 32, 32))
    assert sig["sig/nonfinite"] == 0.0 and all(math.isfinite(v) for v in sig.values())
    assert list(topo.groups.values())[-1] == 10 and topo.num_edges > 10_000
    if arch == "mobilenet_v2":  # depthwise convs: one edge per filter
        depthwise = [c for c in topo.connections if c.groups > 1]
        assert depthwise and all(c.groups == topo.groups[c.dst] == topo.groups[c.src] for c in depthwise)
    if arch == "densenet121":  # concatenations: layers read several groups; pre-activation BatchNorm ignored
        assert any(c.in_offset > 0 for c in topo.connections)
        assert not any(c.bn == "features.denseblock1.denselayer1.norm1" for c in topo.connections)
        assert any(c.bn == "features.denseblock1.denselayer1.norm2" for c in topo.connections)
    if arch == "efficientnet_b0":  # squeeze-and-excitation: the gate's convs are groups of their own
        se = "features.1.0.block.1"
        assert f"{se}.fc1" in topo.groups and f"{se}.fc2" in topo.groups
        project = [c for c in topo.connections if c.weight == "features.1.0.block.2.0.weight"]
        assert [c.src for c in project] == ["features.1.0.block.0.0"]  # reads the gated depthwise conv


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.rnn = nn.LSTM(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = self.conv(x).flatten(2).transpose(1, 2)
        out, _ = self.rnn(h)
        return self.fc(out[:, -1])


class Transposed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.conv(x).transpose(1, 2)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_outside_the_rules_is_one_line_naming_the_op():
    with pytest.raises(UntraceableModel) as err:
        topology_of(WithLSTM(), torch.zeros(2, 1, 8, 8))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("WithLSTM: no rule for torch.nn.modules.rnn.LSTM at 'rnn' is outside the rolled graph")
    with pytest.raises(UntraceableModel, match=r"^Transposed: no rule for Tensor.transpose at node 'transpose'"):
        topology_of(Transposed(), torch.zeros(2, 1, 8, 8))  # an op that mixes channels, in a known module
    with pytest.raises(UntraceableModel, match=r"^Branchy cannot be traced by torch\.fx"):
        topology_of(Branchy(), torch.zeros(2, 4))
    with pytest.raises(UntraceableModel, match=r"does not run on an example input of shape \(2, 3, 32, 32\)"):
        topology_of(build_model("lenet", in_channels=1, image_size=28), torch.zeros(2, 3, 32, 32))


def test_a_network_that_declares_no_input_is_tried_on_the_usual_image_sizes():
    class For28(nn.Module):  # runs on 28x28 only: the linear layer reads 16 x 7 x 7 features
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 16, 3, padding=1)
            self.fc = nn.Linear(16 * 7 * 7, 10)

        def forward(self, x):
            return self.fc(torch.flatten(F.max_pool2d(torch.relu(self.conv(x)), 4), 1))

    topo = topology_of(For28())
    assert [(c.src, c.dst, c.kind, c.spatial) for c in topo.connections] == [
        ("input", "conv", "conv", 1), ("conv", "fc", "flatten", 49)]
    with pytest.raises(UntraceableModel, match=r"shape \(2, 1, 32, 32\), \(2, 1, 28, 28\), .*example_input_shape"):
        topology_of(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(7, 2)))
