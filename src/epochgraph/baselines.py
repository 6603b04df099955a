"""The paper's weight baselines (section 4) and the unrolled graph of Rieck et al. (2019).

* ``b_wl``: the flattened parameters (weights and bias) of the last layer (Unterthiner et al. 2020);
* ``b_what``: 7 aggregators of that vector: mean, variance, percentiles 0/25/50/75/100;
* ``b_wprime``: the 5 signature aggregators of that vector (median, mean, std, skewness, kurtosis);
* ``unrolled_degree``: the weighted degrees of the unrolled graph, where every activation position is a
  node and every multiplication an edge. The degrees are computed exactly without building the edge
  list (a conv's degree map is a convolution of |K| with ones); the memory budget applies to what an
  explicit edge list would need (int64 endpoints + float64 weight = 24 bytes an edge), and a model over
  budget raises `OverBudget`, the paper's "OOM" cells.

Unrolled nodes are the input positions of every conv / linear layer plus the logits; a pooling step
between two layers merges the positions it pools into one node (degrees are sum-pooled).
Models with residual shortcuts are outside the unrolled representation's scope (as in the paper).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from epochgraph.signature import aggregate
from epochgraph.topology import Topology

BYTES_PER_EDGE = 24
DEFAULT_BUDGET = 2 * 1024**3


class OverBudget(Exception):
    """The unrolled graph would not fit the memory budget."""


def last_layer(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Flattened weights and bias of the model's last layer (the classifier)."""
    conn = topology.connections[-1]
    parts = [torch.as_tensor(state_dict[conn.weight]).detach().double().reshape(-1)]
    bias = topology.biases.get(conn.dst)
    if bias is not None and bias in state_dict:
        parts.append(torch.as_tensor(state_dict[bias]).detach().double().reshape(-1))
    return torch.cat(parts).numpy()


def b_wl(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> np.ndarray:
    return last_layer(topology, state_dict)


def b_what(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> np.ndarray:
    x = last_layer(topology, state_dict)
    if not np.all(np.isfinite(x)):
        return np.full(7, np.nan)
    return np.array([x.mean(), x.var(), *np.percentile(x, [0, 25, 50, 75, 100])])


def b_wprime(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> np.ndarray:
    return aggregate(last_layer(topology, state_dict))


def _layer_shapes(model: nn.Module, in_channels: int, image_size: int) -> list[tuple[nn.Module, tuple, tuple]]:
    """(layer, input shape, output shape) of every conv / linear layer, in forward order."""
    seen: list[tuple[nn.Module, tuple, tuple]] = []

    def hook(module, inputs, output):
        seen.append((module, tuple(inputs[0].shape[1:]), tuple(output.shape[1:])))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return seen


def unrolled_size(model: nn.Module, in_channels: int, image_size: int) -> tuple[int, int]:
    """(nodes, edges) of the unrolled graph (edges counted with padding taps, an upper bound)."""
    nodes = edges = 0
    for layer, shape_in, shape_out in _layer_shapes(model, in_channels, image_size):
        nodes += int(np.prod(shape_in))
        if isinstance(layer, nn.Conv2d):
            edges += int(np.prod(shape_out)) * layer.in_channels // layer.groups * int(np.prod(layer.kernel_size))
        else:
            edges += layer.in_features * layer.out_features
    nodes += int(np.prod(shape_out))
    return nodes, edges


def unrolled_degree(model: nn.Module, in_channels: int, image_size: int,
                    max_bytes: int = DEFAULT_BUDGET) -> np.ndarray:
    """Weighted degree of every node of the unrolled graph (see the module docstring)."""
    if any(m.__class__.__name__ == "BasicBlock" for m in model.modules()):
        raise OverBudget("the unrolled graph covers sequential models only, not residual blocks")
    nodes, edges = unrolled_size(model, in_channels, image_size)
    need = edges * BYTES_PER_EDGE
    if need > max_bytes:
        raise OverBudget(f"over memory budget: needs {need / 2**20:.0f} MB, budget {max_bytes / 2**20:.0f} MB")
    layers = _layer_shapes(model, in_channels, image_size)
    # per layer: degree contributions on its input positions and on its output positions
    maps_in, maps_out = [], []
    with torch.no_grad():
        for layer, shape_in, shape_out in layers:
            w = layer.weight.detach().double().abs()
            if isinstance(layer, nn.Conv2d):
                ones_in = torch.ones(1, *shape_in, dtype=torch.float64)
                out_deg = F.conv2d(ones_in, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
                ones_out = torch.ones(1, *shape_out, dtype=torch.float64)
                in_deg = F.conv_transpose2d(ones_out, w, None, layer.stride, layer.padding, 0, layer.groups,
                                            layer.dilation)
                in_deg = _fit(in_deg, shape_in)
                maps_in.append(in_deg[0])
                maps_out.append(out_deg[0])
            else:
                maps_in.append(w.sum(0).reshape(shape_in))
                maps_out.append(w.sum(1).reshape(shape_out))
    degrees = [maps_in[0].reshape(-1)]
    for i in range(1, len(layers)):
        prev_out, shape_in = maps_out[i - 1], layers[i][1]
        degrees.append(_pool_to(prev_out, shape_in).reshape(-1) + maps_in[i].reshape(-1))
    degrees.append(maps_out[-1].reshape(-1))
    return torch.cat(degrees).numpy()


def _fit(x: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Crop or zero-pad the spatial size of a transposed-conv result to ``shape``."""
    h, w = shape[-2:]
    x = x[..., :h, :w]
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def _pool_to(x: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Sum-pool the degree map ``x`` of a layer's outputs onto the next layer's input positions."""
    numel = int(np.prod(shape))
    if x.numel() == numel:
        return x.reshape(shape)
    if x.dim() == 3 and len(shape) == 3 and x.shape[0] == shape[0]:  # spatial pooling
        return F.adaptive_avg_pool2d(x[None], shape[-2:])[0] * (x.shape[-1] * x.shape[-2]) / (shape[-1] * shape[-2])
    if x.dim() == 3 and len(shape) == 1:  # pooling then flatten
        c = x.shape[0]
        side = int(round((shape[0] // c) ** 0.5))
        pooled = F.adaptive_avg_pool2d(x[None], (side, side))[0] * (x.shape[-1] * x.shape[-2]) / side**2
        return pooled.reshape(-1)
    raise OverBudget(f"cannot map a {tuple(x.shape)} layer output onto a {shape} input in the unrolled graph")
