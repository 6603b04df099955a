"""The paper's weight baselines (section 4) and the unrolled graph of Rieck et al. (2019).

Last-layer baselines (Unterthiner et al. 2020); the last layer is the weight of the topology's last
connection (the classifier) plus its bias:

* `b_wl` (B_Wl): its flattened parameters, weights then bias;
* `b_what` (B_Ŵ): 7 aggregators of that vector: mean, variance (population), percentiles
  0/25/50/75/100 (numpy's linear interpolation);
* `b_wprime` (B_W′): the 5 signature aggregators of that vector (`epochgraph.graph.signature.aggregate`).

**Unrolled graph** (`unrolled_degree`): every activation position is a node and every
multiplication an edge of weight |w|. A conv with kernel K maps input position (k, y, x) to output
position (l, y', x') through tap K[l, k, dy, dx] whenever the tap lands inside the input (zero padding
adds no edge); a linear layer joins every input to every output with |W[o, i]|; an identity shortcut
joins position i of the block input to position i of the block output with weight 1. BatchNorm is
folded as in the rolled graph (edges into channel l scaled by |gamma_l| / sqrt(running_var_l + eps)).
Pooling has no weights: the positions a pooling window reads are merged into the node the next layer
reads (so its degree is the sum of theirs); a position read by two overlapping windows (adaptive
pooling) belongs to both, and a position no window reads (floor-mode pooling of an odd size) stays
a node of its own. Nodes are listed group by group in topology order.

The degrees are computed exactly without building the edge list: a conv's degree map on its outputs
is a convolution of ones with |K|, on its inputs a transposed convolution of ones with |K|.
The memory budget applies to what an explicit graph would need (int64 endpoints + float64 weight =
24 bytes an edge, 8 bytes a node's degree); a model over budget raises `OverBudget` before anything
is computed, the paper's "OOM" cells.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from epochgraph.errors import EpochgraphError
from epochgraph.graph.rolled_graph import bn_scale
from epochgraph.graph.signature import aggregate
from epochgraph.graph.topology import Topology
from epochgraph.graph.tracing import topology_of

BYTES_PER_EDGE = 24
BYTES_PER_NODE = 8
DEFAULT_BUDGET = 2 * 1024**3
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)


class OverBudget(EpochgraphError):
    """The unrolled graph would not fit the memory budget; the message names both sizes."""


class UnrolledUnsupported(EpochgraphError):
    """The model has a layer or a wiring the unrolled graph does not cover."""


# --- last-layer baselines -------------------------------------------------------------------------

def last_layer(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Flattened weights and bias of the model's last layer (the classifier), float64."""
    conn = topology.connections[-1]
    parts = [torch.as_tensor(state_dict[conn.weight]).detach().double().reshape(-1)]
    bias = topology.biases.get(conn.dst)
    if bias is not None and bias in state_dict:
        parts.append(torch.as_tensor(state_dict[bias]).detach().double().reshape(-1))
    return torch.cat(parts).numpy()


def b_wl(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> np.ndarray:
    """B_Wl: the last layer's flattened weights and bias."""
    return last_layer(topology, state_dict)


def b_what(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> np.ndarray:
    """B_Ŵ: mean, variance, percentiles 0/25/50/75/100 of the last layer (NaN if non-finite)."""
    x = last_layer(topology, state_dict)
    if not np.all(np.isfinite(x)):
        return np.full(7, np.nan)
    return np.array([x.mean(), x.var(), *np.percentile(x, [0, 25, 50, 75, 100])])


def b_wprime(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> np.ndarray:
    """B_W′: the 5 signature aggregators of the last layer (NaN if non-finite)."""
    return aggregate(last_layer(topology, state_dict))


# --- unrolled graph -------------------------------------------------------------------------------

@dataclass
class _Call:
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


@dataclass
class _Group:
    raw_shape: tuple[int, ...]  # activation positions as the producing layer writes them
    node_shape: tuple[int, ...]  # positions as the consuming layer reads them (after pooling)
    pools: list[_Call] = field(default_factory=list)  # pooling calls from raw to node
    dropped: torch.Tensor | None = None  # raw positions no pooling window reads (own nodes)

    @property
    def num_nodes(self) -> int:
        return int(np.prod(self.node_shape)) + (int(self.dropped.sum()) if self.dropped is not None else 0)


@dataclass
class UnrolledPlan:
    """Shapes of every node group and the layer behind every connection, from one dummy forward pass."""

    topology: Topology
    groups: dict[str, _Group]
    layers: dict[int, _Call]  # connection index -> its layer call
    num_nodes: int
    num_edges: int

    @property
    def bytes_needed(self) -> int:
        return self.num_edges * BYTES_PER_EDGE + self.num_nodes * BYTES_PER_NODE


def _trace(model: nn.Module, in_channels: int, image_size: int) -> list[_Call]:
    """Every leaf module call of one forward pass on a zero input, in call order."""
    calls: list[_Call] = []

    def hook(module, inputs, output):
        calls.append(_Call(module, tuple(inputs[0].shape[1:]), tuple(output.shape[1:])))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls


def _sum_pool(module: nn.Module, x: torch.Tensor, out_shape: tuple[int, ...]) -> torch.Tensor:
    """Sum of ``x`` [C, H, W] over each window of the pooling ``module`` (its output shape given)."""
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        if getattr(module, "dilation", 1) not in (1, (1, 1)):
            raise UnrolledUnsupported(f"the unrolled graph does not cover dilated pooling ({module})")
        y = F.avg_pool2d(x[None], module.kernel_size, module.stride, module.padding, module.ceil_mode,
                         count_include_pad=True, divisor_override=1)[0]
    else:  # adaptive pooling: window i spans [floor(i H / h), ceil((i + 1) H / h))
        def windows(size: int, out: int) -> torch.Tensor:
            i = torch.arange(out)
            start, end = (i * size) // out, ((i + 1) * size + out - 1) // out
            j = torch.arange(size)
            return ((j[None] >= start[:, None]) & (j[None] < end[:, None])).to(x.dtype)

        y = torch.einsum("ih,chw,jw->cij", windows(x.shape[1], out_shape[1]), x, windows(x.shape[2], out_shape[2]))
    if tuple(y.shape) != out_shape:
        raise UnrolledUnsupported(f"cannot follow {module} from {tuple(x.shape)} to {out_shape}")
    return y


def _apply_pools(group: _Group, x: torch.Tensor) -> torch.Tensor:
    """Merge a group's raw degree map onto its nodes (the sum over every pooling window)."""
    for call in group.pools:
        x = _sum_pool(call.module, x, call.out_shape)
    if x.numel() != int(np.prod(group.node_shape)):
        raise UnrolledUnsupported(f"pooling leads to {tuple(x.shape)}, but the next layer reads {group.node_shape}")
    return x.reshape(group.node_shape)


def unrolled_plan(model: nn.Module, in_channels: int, image_size: int,
                  topology: Topology | None = None) -> UnrolledPlan:
    """Trace ``model`` once and size its unrolled graph (exact node and edge counts)."""
    topology = topology or topology_of(model)
    if any(c.in_offset for c in topology.connections):
        raise UnrolledUnsupported("the unrolled graph does not cover channel concatenations")
    calls = _trace(model, in_channels, image_size)
    order: dict[int, int] = {}  # id(weight layer) -> its position in the call order
    for i, c in enumerate(calls):
        if isinstance(c.module, (nn.Conv2d, nn.Linear)):
            if id(c.module) in order:
                raise UnrolledUnsupported(f"layer {c.module} runs twice in one forward pass")
            order[id(c.module)] = i
    modules = dict(model.named_modules())
    layers: dict[int, _Call] = {}
    for k, conn in enumerate(topology.connections):
        if conn.kind == "identity":
            continue
        name = conn.weight.rsplit(".", 1)[0]
        module = modules.get(name)
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or id(module) not in order:
            raise UnrolledUnsupported(f"{conn.weight} is not the weight of a Conv2d or Linear layer the "
                                      "forward pass runs")
        if isinstance(module, nn.Conv2d) and (isinstance(module.padding, str) or module.padding_mode != "zeros"):
            raise UnrolledUnsupported(f"{name}: the unrolled graph covers numeric zero padding only")
        layers[k] = calls[order[id(module)]]

    groups: dict[str, _Group] = {}
    for g in topology.groups:
        producers = [k for k, c in enumerate(topology.connections) if c.dst == g and k in layers]
        consumers = [k for k, c in enumerate(topology.connections) if c.src == g and k in layers]
        if g == "input":
            raw, lo = (in_channels, image_size, image_size), -1
        elif producers:
            raw, lo = layers[producers[0]].out_shape, order[id(layers[producers[0]].module)]
        else:
            raise UnrolledUnsupported(f"node group {g!r} has no layer producing it")
        if not consumers:
            groups[g] = _Group(raw, raw)
            continue
        hi = min(order[id(layers[k].module)] for k in consumers)
        pools = [c for c in calls[lo + 1:hi] if isinstance(c.module, _POOLS)]
        node = layers[consumers[0]].in_shape
        group = _Group(raw, node, pools)
        if pools:
            probe = torch.ones(raw, dtype=torch.float64, requires_grad=True)
            _apply_pools(group, probe).sum().backward()
            group.dropped = probe.grad.reshape(-1) == 0
        groups[g] = group
        for k in consumers:
            if int(np.prod(layers[k].in_shape)) != int(np.prod(node)):
                raise UnrolledUnsupported(f"node group {g!r} is read in two different shapes")

    edges = 0
    for k, conn in enumerate(topology.connections):
        if conn.kind == "identity":
            if groups[conn.src].node_shape != groups[conn.dst].raw_shape:
                raise UnrolledUnsupported(f"identity shortcut {conn.src}->{conn.dst} joins different shapes")
            edges += int(np.prod(groups[conn.src].node_shape))
            continue
        layer = layers[k].module
        if isinstance(layer, nn.Conv2d):
            taps = F.conv2d(torch.ones(1, 1, *layers[k].in_shape[1:]), torch.ones(1, 1, *layer.kernel_size),
                            None, layer.stride, layer.padding, layer.dilation)
            edges += int(taps.sum()) * (layer.in_channels // layer.groups) * layer.out_channels
        else:
            edges += layer.in_features * layer.out_features
    return UnrolledPlan(topology, groups, layers, sum(g.num_nodes for g in groups.values()), edges)


def unrolled_size(model: nn.Module, in_channels: int, image_size: int,
                  topology: Topology | None = None) -> tuple[int, int]:
    """(nodes, edges) of the unrolled graph, exact (edges = multiplications with in-bounds taps)."""
    plan = unrolled_plan(model, in_channels, image_size, topology)
    return plan.num_nodes, plan.num_edges


def _output_padding(layer: nn.Conv2d, in_hw: tuple[int, ...], out_hw: tuple[int, ...]) -> tuple[int, int]:
    """The output padding that makes a transposed conv return exactly the conv's input size."""
    return tuple(  # type: ignore[return-value]
        in_hw[d] - ((out_hw[d] - 1) * layer.stride[d] - 2 * layer.padding[d]
                    + layer.dilation[d] * (layer.kernel_size[d] - 1) + 1)
        for d in range(2))


def unrolled_degree(model: nn.Module, in_channels: int, image_size: int, max_bytes: int = DEFAULT_BUDGET,
                    topology: Topology | None = None) -> np.ndarray:
    """Weighted degree of every node of the unrolled graph of ``model``'s current weights.

    Raises `OverBudget` (before computing anything) when an explicit graph would need more than
    ``max_bytes``, and `UnrolledUnsupported` for a model outside its scope. ``topology`` defaults to
    the traced one (`topology_of`).
    """
    plan = unrolled_plan(model, in_channels, image_size, topology)
    if plan.bytes_needed > max_bytes:
        raise OverBudget(f"over memory budget: needs {plan.bytes_needed / 2**20:.0f} MB, "
                         f"budget {max_bytes / 2**20:.0f} MB")
    sd = model.state_dict()
    raw = {g: torch.zeros(grp.raw_shape, dtype=torch.float64) for g, grp in plan.groups.items()}
    node = {g: torch.zeros(grp.node_shape, dtype=torch.float64) for g, grp in plan.groups.items()}
    with torch.no_grad():
        for k, conn in enumerate(plan.topology.connections):
            src, dst = plan.groups[conn.src], plan.groups[conn.dst]
            if conn.kind == "identity":
                node[conn.src] += 1.0
                raw[conn.dst] += 1.0
                continue
            call = plan.layers[k]
            layer = call.module
            w = layer.weight.detach().double().abs()
            if conn.bn is not None:
                w = w * bn_scale(sd, conn.bn).reshape(-1, *([1] * (w.dim() - 1)))
            if isinstance(layer, nn.Conv2d):
                ones_in = torch.ones(1, *call.in_shape, dtype=torch.float64)
                out_map = F.conv2d(ones_in, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)[0]
                ones_out = torch.ones(1, *call.out_shape, dtype=torch.float64)
                in_map = F.conv_transpose2d(ones_out, w, None, layer.stride, layer.padding,
                                            _output_padding(layer, call.in_shape[1:], call.out_shape[1:]),
                                            layer.groups, layer.dilation)[0]
            else:
                in_map, out_map = w.sum(0), w.sum(1)
            node[conn.src] += in_map.reshape(src.node_shape)
            raw[conn.dst] += out_map.reshape(dst.raw_shape)
    degrees: list[torch.Tensor] = []
    for g, grp in plan.groups.items():
        merged = _apply_pools(grp, raw[g])
        degrees.append((node[g] + merged).reshape(-1))
        if grp.dropped is not None:
            degrees.append(raw[g].reshape(-1)[grp.dropped])
    return torch.cat(degrees).numpy()
