"""The rolled graph of a CNN (paper S1): one node per input channel, conv filter and linear neuron.

Edges join consecutive layers (and the two ends of a residual shortcut), built vectorised from the
``state_dict`` and the model's `Topology`:

* conv kernel K ``[f_out, c_in, h, w]``: edge (in-channel k -> filter l) = ||K[l, k, :, :]||_2;
* linear W ``[out, in]``: edge (i -> o) = |W[o, i]|;
* conv -> linear (flatten): the ``spatial`` input features of channel k are grouped,
  edge (k -> o) = ||W[o, k*spatial:(k+1)*spatial]||_2;
* identity shortcut: edge (i -> i) = 1; a projection shortcut (1x1 conv) is a conv like any other.

**BatchNorm** is folded into the layer it follows. At inference it maps filter l's output x_l to
gamma_l (x_l - mean_l) / sqrt(running_var_l + eps) + beta_l (eps = 1e-5), so every edge into filter l
of that connection is multiplied by scale_l = |gamma_l| / sqrt(running_var_l + eps) (the absolute
value: edge weights are magnitudes). The node attribute ``bias`` is the folded bias
gamma_l (b_l - mean_l) / sqrt(running_var_l + eps) + beta_l, summed over every BatchNorm that feeds
the node (a residual block output gets its own and its projection shortcut's); nodes without bias
or BatchNorm (the input channels, bias-free layers) have bias 0.

The graph is undirected: the centralities of S2 are taken on the symmetric weighted adjacency.
Weights are read in their own precision (float32 norms are 4x faster on large layers) and widened
to float64; a norm that overflows float32 is recomputed in float64.

Representations of the same edges:

* `edge_arrays`: plain numpy arrays ``src, dst, weight`` (no graph object, no Python loop over edges);
* `rolled_graph`: a `graph_tool.Graph` with edge property ``weight`` and vertex properties ``bias``
  and ``group``, built from scratch;
* `PersistentRolledGraph`: the same `graph_tool.Graph`, built once per run and then only given new
  weights, in place, at every epoch - the graph the training's graph stage works on;
* `block_graph`: one dense weight block per connection, for very large graphs (see `BlockGraph`).

Weights on a GPU are reduced to their norms on the GPU; only the ``[|dst|, |src|]`` norm matrices
are copied to the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from epochgraph.graph.topology import Connection, Topology, edge_count, grouped_pattern

if TYPE_CHECKING:
    import graph_tool

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


def bn_scale(state_dict: Mapping[str, torch.Tensor], prefix: str, signed: bool = False) -> torch.Tensor:
    """|gamma| / sqrt(running_var + eps) of the BatchNorm at ``prefix`` (gamma / ... if ``signed``)."""
    gamma = _as_tensor(state_dict[f"{prefix}.weight"]).double()
    var = _as_tensor(state_dict[f"{prefix}.running_var"]).double()
    return (gamma if signed else gamma.abs()) / torch.sqrt(var + BN_EPS)


def _prefix(key: str) -> str:
    return key.rsplit(".", 1)[0]


def _small_tensors_on_host(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The biases and BatchNorm statistics of ``state_dict`` on the CPU (a few kB; the weights stay put)."""
    keys = set(topology.biases.values())
    for conn in topology.connections:
        if conn.bn is not None:
            keys |= {f"{conn.bn}.{name}" for name in ("weight", "bias", "running_mean", "running_var")}
    return {k: _as_tensor(state_dict[k]).detach().cpu() for k in keys if k in state_dict}


def node_biases(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The ``bias`` node attribute: every layer's bias with its BatchNorm folded in, 0 where none."""
    state_dict = _small_tensors_on_host(topology, state_dict)
    offsets = topology.offsets()
    raw = {g: _as_tensor(state_dict[k]).detach().double().reshape(-1) for g, k in topology.biases.items()
           if k in state_dict}
    out = {g: torch.zeros(n, dtype=torch.float64) for g, n in topology.groups.items()}
    folded: set[str] = set()
    for conn in topology.connections:
        if conn.bn is None:
            continue
        scale = bn_scale(state_dict, conn.bn, signed=True)
        mean = _as_tensor(state_dict[f"{conn.bn}.running_mean"]).double()
        beta = _as_tensor(state_dict[f"{conn.bn}.bias"]).double()
        b = torch.zeros_like(mean)
        key = topology.biases.get(conn.dst)
        # the layer's own bias passes through the BatchNorm that follows that layer
        if conn.dst in raw and conn.weight is not None and key is not None and _prefix(key) == _prefix(conn.weight):
            b = raw[conn.dst]
            folded.add(conn.dst)
        out[conn.dst] += scale * (b - mean) + beta
    for g, b in raw.items():
        if g not in folded:
            out[g] += b
    bias = np.zeros(topology.num_nodes)
    for g, v in out.items():
        bias[offsets[g]: offsets[g] + topology.groups[g]] = v.numpy()
    return bias


def _norms(conn: Connection, w: torch.Tensor, n_src: int, n_dst: int) -> torch.Tensor:
    """The norms of the weight columns the connection reads: ``[n_dst, n_src]``, or for a grouped conv
    ``[n_dst, group_in]`` (one per kernel column; `grouped_pattern` says which node each joins)."""
    lo = conn.in_offset
    if conn.kind == "conv":
        if conn.groups > 1:
            return torch.linalg.vector_norm(w.reshape(n_dst, conn.group_in, -1), dim=2)
        return torch.linalg.vector_norm(w[:, lo:lo + n_src].reshape(n_dst, n_src, -1), dim=2)
    if conn.kind == "linear":
        return w[:, lo:lo + n_src].abs()
    if conn.kind == "flatten":
        sp = conn.spatial
        return torch.linalg.vector_norm(w[:, lo * sp:(lo + n_src) * sp].reshape(n_dst, n_src, sp), dim=2)
    raise ValueError(f"unknown connection kind {conn.kind!r}")  # pragma: no cover - Topology admits no other


def _scaled_norms(conn: Connection, state_dict: Mapping[str, torch.Tensor], n_src: int,
                  n_dst: int) -> torch.Tensor:
    """`_norms` in float64 on the host, BatchNorm folded into the rows."""
    # norms are taken in the weights' own precision (float32: 4x faster on large layers), then widened
    w = _as_tensor(state_dict[conn.weight]).detach()
    if not w.is_floating_point():
        w = w.double()
    m = _norms(conn, w, n_src, n_dst)
    if not bool(torch.isfinite(m).all()) and bool(torch.isfinite(w).all()):
        m = _norms(conn, w.double(), n_src, n_dst)  # float32 overflow of a finite, very large weight
    m = m.to(torch.float64)
    if conn.bn is not None:
        m = m * bn_scale(state_dict, conn.bn).to(m.device)[:, None]
    return m.cpu()


def connection_weights(conn: Connection, state_dict: Mapping[str, torch.Tensor], n_src: int,
                       n_dst: int) -> torch.Tensor:
    """The ``[n_dst, n_src]`` matrix of edge weights of one connection (float64, BatchNorm folded; 0
    where a grouped conv has no edge)."""
    if conn.kind == "identity":
        return torch.eye(n_dst, n_src, dtype=torch.float64)
    m = _scaled_norms(conn, state_dict, n_src, n_dst)
    if conn.dense:
        return m
    rows, cols, kcols = grouped_pattern(conn, n_src, n_dst)
    dense = np.zeros((n_dst, n_src))
    dense[rows, cols] = m.numpy()[rows, kcols]
    return torch.from_numpy(dense)


def connection_values(conn: Connection, state_dict: Mapping[str, torch.Tensor], n_src: int,
                      n_dst: int) -> np.ndarray:
    """The weights of the connection's edges in `connection_edges` order (float64)."""
    if conn.kind == "identity":
        return np.ones(n_src)
    m = _scaled_norms(conn, state_dict, n_src, n_dst).numpy()
    if conn.dense:
        return m.reshape(-1)
    rows, _, kcols = grouped_pattern(conn, n_src, n_dst)
    return m[rows, kcols]


def connection_edges(conn: Connection, n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` node indices within the two groups of every edge of a connection: a dense one's
    ``[n_dst, n_src]`` matrix row-major (entry (l, k) at l * n_src + k), a grouped conv's
    `grouped_pattern`, an identity shortcut's diagonal."""
    if conn.kind == "identity":
        idx = np.arange(n_src)
        return idx, idx
    if conn.dense:
        return np.tile(np.arange(n_src), n_dst), np.repeat(np.arange(n_dst), n_src)
    rows, cols, _ = grouped_pattern(conn, n_src, n_dst)
    return cols, rows


def edge_arrays(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> EdgeArrays:
    """All edges of the rolled graph as numpy arrays (the graph-tool-free path), with no Python loop
    over edges: per connection, the edges of `connection_edges` and their `connection_values`."""
    offsets = topology.offsets()
    srcs, dsts, weights = [], [], []
    for conn in topology.connections:
        n_src, n_dst = topology.groups[conn.src], topology.groups[conn.dst]
        src, dst = connection_edges(conn, n_src, n_dst)
        srcs.append(offsets[conn.src] + src)
        dsts.append(offsets[conn.dst] + dst)
        weights.append(connection_values(conn, state_dict, n_src, n_dst))
    group = np.repeat(np.arange(len(topology.groups)), list(topology.groups.values()))
    return EdgeArrays(np.concatenate(srcs).astype(np.int64), np.concatenate(dsts).astype(np.int64),
                      np.concatenate(weights), topology.num_nodes, group, node_biases(topology, state_dict))


def graph_from_arrays(edges: EdgeArrays) -> graph_tool.Graph:
    """A `graph_tool.Graph` (undirected) with edge property ``weight`` (double) and vertex properties
    ``group`` (int, index of the node group in topology order) and ``bias`` (double)."""
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


def rolled_graph(topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> graph_tool.Graph:
    """The rolled graph of a model's weights as a `graph_tool.Graph` (see the module docstring)."""
    return graph_from_arrays(edge_arrays(topology, state_dict))


class PersistentRolledGraph:
    """A run's rolled graph as one `graph_tool.Graph`, built once and then given new weights in place.

    The nodes and edges of a run's rolled graph are the same at every epoch; only the weights change.
    So the graph is built from the first snapshot, with its edges in `edge_arrays` order (connection
    by connection, each connection's ``[|dst|, |src|]`` weight matrix row-major, so edge index = its
    position there), and `update` writes each later snapshot's norms into the edge property ``weight``
    one vectorised slice per connection (identity shortcuts keep their weight 1), and the folded biases
    into the vertex property ``bias``.

    The weighted adjacency matrix that eigenvector centrality needs is graph-tool's own
    (`graph_tool.spectral.adjacency`), and it is kept too: its sparsity pattern never changes, so after
    an update `adjacency` rewrites only its values from ``weight``: layer pair by layer pair where its
    layout allows (every zoo model; see `_find_block_writes`), else through a map from each matrix
    entry to its edge. Rebuilding it is the largest cost of an epoch on large graphs (bench). Where two
    edges join the same pair of nodes they share one matrix entry (their sum), which neither can
    express; such a graph gets a new matrix from graph-tool after every update.

    >>> from epochgraph.graph.tracing import topology_of
    >>> from epochgraph.models import build_model
    >>> model = build_model("lenet", in_channels=1, image_size=28)
    >>> graph = PersistentRolledGraph(topology_of(model), model.state_dict())
    >>> graph.graph.num_vertices(), graph.graph.num_edges()
    (237, 12942)
    >>> graph.update(model.state_dict())  # the next epoch's weights, written in place
    """

    def __init__(self, topology: Topology, state_dict: Mapping[str, torch.Tensor]) -> None:
        edges = edge_arrays(topology, state_dict)
        self.topology = topology
        self.graph = graph_from_arrays(edges)
        self.weight = self.graph.edge_properties["weight"]
        offsets = topology.offsets()
        # (connection, first edge index, |src|, |dst|, src offset, dst offset) of every connection
        self.connection_spans: list[tuple[Connection, int, int, int, int, int]] = []
        start = 0
        for conn in topology.connections:
            n_src, n_dst = topology.groups[conn.src], topology.groups[conn.dst]
            self.connection_spans.append((conn, start, n_src, n_dst, offsets[conn.src], offsets[conn.dst]))
            start += edge_count(conn, n_src, n_dst)
        self._adjacency: sp.csr_matrix | None = None
        self._entry_edge: np.ndarray | None = None  # edge index of every stored entry of the adjacency
        self._block_writes: list[tuple[np.ndarray, int, bool]] | None = None  # see `_find_block_writes`
        self._adjacency_current = False

    @property
    def num_nodes(self) -> int:
        return self.graph.num_vertices()

    @property
    def num_edges(self) -> int:
        return self.graph.num_edges()

    def update(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Write the edge weights and node biases of a new snapshot of the same model into the graph."""
        weight = self.weight.a
        for conn, start, n_src, n_dst, _, _ in self.connection_spans:
            if conn.kind == "identity":
                continue
            values = connection_values(conn, state_dict, n_src, n_dst)
            weight[start:start + len(values)] = values
        self.graph.vertex_properties["bias"].a[:] = node_biases(self.topology, state_dict)
        self._adjacency_current = False

    def connection_matrix(self, index: int) -> np.ndarray:
        """The current ``[|dst|, |src|]`` weights of connection ``index`` (a view of ``weight``; an
        identity shortcut gives its ``[n]`` diagonal; a grouped conv a copy, 0 where it has no edge)."""
        conn, start, n_src, n_dst, _, _ = self.connection_spans[index]
        if conn.kind == "identity":
            return self.weight.a[start:start + n_src]
        if conn.dense:
            return self.weight.a[start:start + n_src * n_dst].reshape(n_dst, n_src)
        rows, cols, _ = grouped_pattern(conn, n_src, n_dst)
        dense = np.zeros((n_dst, n_src))
        dense[rows, cols] = self.weight.a[start:start + len(rows)]
        return dense

    def adjacency(self) -> sp.csr_matrix:
        """The symmetric weighted adjacency matrix, `graph_tool.spectral.adjacency` of ``weight``:
        built at the first call, its values rewritten after each `update`."""
        from graph_tool.spectral import adjacency

        if self._adjacency is None:
            self._adjacency = sp.csr_matrix(adjacency(self.graph, weight=self.weight))
            self._block_writes = self._find_block_writes(self._adjacency)
            if self._block_writes is None:
                self._entry_edge = self._find_entry_edges(self._adjacency)
        elif not self._adjacency_current:
            if self._block_writes is not None:
                self._write_blocks(self._block_writes)
            elif self._entry_edge is not None:
                np.take(self.weight.a, self._entry_edge, out=self._adjacency.data)
            else:
                self._adjacency = sp.csr_matrix(adjacency(self.graph, weight=self.weight))
        self._adjacency_current = True
        return self._adjacency

    def _find_entry_edges(self, adj: sp.csr_matrix) -> np.ndarray | None:
        """The edge index of every stored entry of ``adj`` (graph-tool's adjacency of an edge-index
        property), or None when two edges share an entry."""
        from graph_tool.spectral import adjacency

        edge_index = self.graph.new_edge_property("double")
        edge_index.a[:] = np.arange(self.num_edges)
        entries = sp.csr_matrix(adjacency(self.graph, weight=edge_index))
        # every edge must own its two entries (u, v) and (v, u), in the same places as in the matrix
        if (entries.nnz == 2 * self.num_edges and np.array_equal(entries.indptr, adj.indptr)
                and np.array_equal(entries.indices, adj.indices)):
            return entries.data.astype(np.intp)
        return None

    def _write_blocks(self, writes: list[tuple[np.ndarray, int, bool]]) -> None:
        for view, index, node_is_dst in writes:
            m = self.connection_matrix(index)
            view[...] = m if node_is_dst or m.ndim == 1 else m.T

    def _find_block_writes(self, adj: sp.csr_matrix) -> list[tuple[np.ndarray, int, bool]] | None:
        """How to rewrite ``adj``'s values as whole weight matrices, or None where its layout differs.

        In graph-tool's CSR matrix (columns sorted within each row) the rows of one node group all have
        the same entries: one run of columns per neighbouring group, in the order of those groups.
        So the group's slice of ``data`` is a ``[n, row length]`` array whose column blocks are the
        connections' weight matrices (transposed where the group is their source) - a copy of about
        the size of the weights per epoch, several times faster than gathering 2 x |E| entries through
        the entry-to-edge map. Checked once here against that map; any other layout returns None.
        """
        offsets, sizes = self.topology.offsets(), self.topology.groups
        if any(conn.kind != "identity" and not conn.dense for conn, *_ in self.connection_spans):
            return None  # a grouped conv's rows are not whole blocks
        neighbours: dict[str, list[tuple[str, int, bool]]] = {g: [] for g in sizes}
        for index, (conn, *_) in enumerate(self.connection_spans):
            neighbours[conn.dst].append((conn.src, index, True))
            neighbours[conn.src].append((conn.dst, index, False))
        writes: list[tuple[np.ndarray, int, bool]] = []
        for group, n in sizes.items():
            around = sorted(neighbours[group], key=lambda item: offsets[item[0]])
            if not around:
                continue
            if len({other for other, _, _ in around}) != len(around) or group in {o for o, _, _ in around}:
                return None  # two connections between the same groups: parallel edges
            widths = [1 if self.connection_spans[i][0].kind == "identity" else sizes[other]
                      for other, i, _ in around]
            length = sum(widths)
            rows = adj.indptr[offsets[group]:offsets[group] + n + 1]
            if not np.all(np.diff(rows) == length):
                return None
            segment = adj.data[rows[0]:rows[-1]].reshape(n, length)
            column = 0
            for (_, index, node_is_dst), width in zip(around, widths):
                view = segment[:, column] if width == 1 and self.connection_spans[index][0].kind == "identity" \
                    else segment[:, column:column + width]
                writes.append((view, index, node_is_dst))
                column += width
        expected = adj.data.copy()
        adj.data[:] = np.nan
        self._write_blocks(writes)
        if np.array_equal(adj.data, expected):
            return writes
        adj.data[:] = expected
        return None


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
        """Weighted degree: row sums of every block on its dst nodes, column sums on its src nodes."""
        deg = np.zeros(self.num_nodes)
        for s, d, m in self.blocks:
            deg[d:d + m.shape[0]] += m.sum(axis=1, dtype=np.float64)
            deg[s:s + m.shape[1]] += m.sum(axis=0, dtype=np.float64)
        return deg

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """The product A x with the symmetric adjacency A, block by block (for Lanczos)."""
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
