"""The rolled graph of a CNN (paper S1): one node per input channel, conv filter and linear neuron.

Edges join consecutive layers (and the two ends of a residual shortcut), built vectorised from the
``state_dict`` and the model's `Topology`:

* conv kernel K ``[f_out, c_in, h, w]``: edge (in-channel k -> filter l) = ||K[l, k, :, :]||_2;
* linear W ``[out, in]``: edge (i -> o) = |W[o, i]|;
* conv -> linear (flatten): the ``spatial`` input features of channel k are grouped,
  edge (k -> o) = ||W[o, k*spatial:(k+1)*spatial]||_2;
* identity shortcut: edge (i -> i) = 1; a projection shortcut (1x1 conv) is a conv like any other.

**BatchNorm** is folded into the layer it follows: at inference it multiplies the output of filter l by
gamma_l / sqrt(running_var_l + eps), so every edge into filter l is scaled by that factor's absolute
value (the shift beta - mean * scale only moves the bias). The graph is undirected: the centralities
of S2 are taken on the symmetric weighted adjacency.

`edge_arrays` returns plain numpy arrays (the fast path, also what the scipy centralities use);
`rolled_graph` puts them into a `graph_tool.Graph`, the reference representation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from epochgraph.topology import Connection, Topology

BN_EPS = 1e-5


@dataclass
class EdgeArrays:
    """Undirected weighted edge list of a rolled graph: ``src[i] -- dst[i]`` with ``weight[i]``."""

    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    num_nodes: int
    group: np.ndarray  # group index of every node
    bias: np.ndarray  # node attribute: the bias of the filter / neuron (0 where none)

    @property
    def num_edges(self) -> int:
        return len(self.src)


def _as_tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def bn_scale(state_dict: Mapping[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """|gamma| / sqrt(running_var + eps) of the BatchNorm at ``prefix``."""
    gamma = _as_tensor(state_dict[f"{prefix}.weight"]).double()
    var = _as_tensor(state_dict[f"{prefix}.running_var"]).double()
    return gamma.abs() / torch.sqrt(var + BN_EPS)


def connection_weights(conn: Connection, state_dict: Mapping[str, torch.Tensor], n_src: int,
                       n_dst: int) -> torch.Tensor:
    """The ``[n_dst, n_src]`` matrix of edge weights of one connection (float64)."""
    if conn.kind == "identity":
        return torch.eye(n_dst, n_src, dtype=torch.float64)
    # norms are taken in the weights' own precision (float32: 4x faster on large layers), then widened
    w = _as_tensor(state_dict[conn.weight]).detach()
    if not w.is_floating_point():
        w = w.double()
    if conn.kind == "conv":
        m = torch.linalg.vector_norm(w.reshape(n_dst, n_src, -1), dim=2)
    elif conn.kind == "linear":
        m = w.abs()
    elif conn.kind == "flatten":
        m = torch.linalg.vector_norm(w.reshape(n_dst, n_src, conn.spatial), dim=2)
    else:  # pragma: no cover - Topology only admits the kinds above
        raise ValueError(f"unknown connection kind {conn.kind!r}")
    m = m.to(torch.float64)
    if conn.bn is not None:
        m = m * bn_scale(state_dict, conn.bn)[:, None]
    return m


def edge_arrays(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> EdgeArrays:
    """All edges of the rolled graph as numpy arrays, with no Python loop over edges."""
    offsets = topology.offsets()
    srcs, dsts, weights = [], [], []
    for conn in topology.connections:
        n_src, n_dst = topology.groups[conn.src], topology.groups[conn.dst]
        m = connection_weights(conn, state_dict, n_src, n_dst)
        if conn.kind == "identity":
            idx = np.arange(n_src)
            srcs.append(offsets[conn.src] + idx)
            dsts.append(offsets[conn.dst] + idx)
            weights.append(np.ones(n_src))
            continue
        # m is [dst, src] row-major: entry (l, k) sits at l * n_src + k
        srcs.append(offsets[conn.src] + np.tile(np.arange(n_src), n_dst))
        dsts.append(offsets[conn.dst] + np.repeat(np.arange(n_dst), n_src))
        weights.append(m.reshape(-1).numpy())
    group = np.repeat(np.arange(len(topology.groups)), list(topology.groups.values()))
    bias = np.zeros(topology.num_nodes)
    for name, key in topology.biases.items():
        if key in state_dict:
            bias[offsets[name]: offsets[name] + topology.groups[name]] = (
                _as_tensor(state_dict[key]).detach().double().numpy())
    return EdgeArrays(np.concatenate(srcs).astype(np.int64), np.concatenate(dsts).astype(np.int64),
                      np.concatenate(weights), topology.num_nodes, group, bias)


def graph_from_arrays(edges: EdgeArrays):
    """A `graph_tool.Graph` (undirected) with edge property ``weight`` and vertex properties
    ``group`` and ``bias``."""
    import graph_tool

    g = graph_tool.Graph(directed=False)
    g.add_vertex(edges.num_nodes)
    weight = g.new_edge_property("double")
    g.add_edge_list(np.column_stack([edges.src, edges.dst, edges.weight]), eprops=[weight])
    g.edge_properties["weight"] = weight
    group = g.new_vertex_property("int32_t")
    group.a[:] = edges.group
    g.vertex_properties["group"] = group
    bias = g.new_vertex_property("double")
    bias.a[:] = edges.bias
    g.vertex_properties["bias"] = bias
    return g


def rolled_graph(topology: Topology, state_dict: Mapping[str, torch.Tensor]):
    """The rolled graph of a model's weights as a `graph_tool.Graph` (see the module docstring)."""
    return graph_from_arrays(edge_arrays(topology, state_dict))


@dataclass
class BlockGraph:
    """The rolled graph kept as one dense ``[|dst|, |src|]`` weight block per connection.

    Layers are fully connected to their neighbours, so the blocks hold exactly the edges of
    `edge_arrays` without index arrays: degrees are row and column sums, and the adjacency product
    needed by Lanczos is a few matrix-vector products. This is the fast path for large graphs.
    """

    blocks: list[tuple[int, int, np.ndarray]]  # (src offset, dst offset, [n_dst, n_src] weights)
    num_nodes: int

    def degree(self) -> np.ndarray:
        deg = np.zeros(self.num_nodes)
        for s, d, m in self.blocks:
            deg[d:d + m.shape[0]] += m.sum(axis=1, dtype=np.float64)
            deg[s:s + m.shape[1]] += m.sum(axis=0, dtype=np.float64)
        return deg

    def matvec(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).reshape(-1)
        y = np.zeros(self.num_nodes, dtype=np.result_type(x.dtype, np.float64))
        for s, d, m in self.blocks:
            y[d:d + m.shape[0]] += m @ x[s:s + m.shape[1]]
            y[s:s + m.shape[1]] += m.T @ x[d:d + m.shape[0]]
        return y


def block_graph(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> BlockGraph:
    """The rolled graph as dense blocks (see `BlockGraph`); same edges as `edge_arrays`."""
    offsets = topology.offsets()
    blocks = []
    for conn in topology.connections:
        n_src, n_dst = topology.groups[conn.src], topology.groups[conn.dst]
        m = connection_weights(conn, state_dict, n_src, n_dst).numpy()
        blocks.append((offsets[conn.src], offsets[conn.dst], m))
    return BlockGraph(blocks, topology.num_nodes)
