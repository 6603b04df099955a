"""Which conv filters / neurons a model has and how they connect: the skeleton of its rolled graph.

A `Topology` names node groups (the input channels, then one group per conv or linear layer, holding
one node per filter or neuron) and the connections between them, each tied to the ``state_dict`` key
of the tensor that weighs it. It is traced from the model itself (`epochgraph.graph.tracing`); the
rolled graph (`epochgraph.graph.rolled_graph`) is built from a topology plus a ``state_dict`` alone, so
signatures can be recomputed from saved weights without the model's code running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np

ConnectionKind = Literal["conv", "linear", "flatten", "identity"]


@dataclass(frozen=True)
class Connection:
    """Edges from every node of group ``src`` to nodes of group ``dst``.

    * ``conv``: ``weight`` is a kernel ``[|dst|, |src|, h, w]``; edge (k -> l) = ||K[l, k, :, :]||_2.
    * ``linear``: ``weight`` is ``[|dst|, |src|]``; edge (i -> o) = |W[o, i]|.
    * ``flatten``: ``weight`` is ``[|dst|, |src| * spatial]`` (a linear layer after a conv); edge
      (k -> o) = ||W[o, k*spatial:(k+1)*spatial]||_2.
    * ``identity``: a residual shortcut without parameters; edge (i -> i) = 1.

    ``bn`` is the ``state_dict`` prefix of a BatchNorm applied to the layer's output; its per-channel
    scale gamma / sqrt(running_var + eps) is folded into the weights of output filter ``l``.

    A layer that reads a channel concatenation has one connection per concatenated group:
    ``in_offset`` is where ``src``'s channels start among the layer's input channels (the weight's
    columns ``in_offset .. in_offset + |src|``, times ``spatial`` for ``flatten``). A grouped conv
    (``groups`` > 1, ``group_in`` input channels per group) joins filter l of group g = l // (|dst| /
    groups) only to the input channels k of that group, with edge ||K[l, k - g * group_in, :, :]||_2:
    `grouped_pattern` lists those edges (a depthwise conv has one edge per filter).
    """

    src: str
    dst: str
    kind: ConnectionKind
    weight: str | None = None
    bn: str | None = None
    spatial: int = 1
    in_offset: int = 0
    groups: int = 1
    group_in: int = 0

    @property
    def dense(self) -> bool:
        """Every (src, dst) pair is an edge (all but grouped convs and identity shortcuts)."""
        return self.kind != "identity" and self.groups == 1


@lru_cache(maxsize=4096)
def grouped_pattern(conn: Connection, n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges of a grouped conv: ``(filter l, src node, kernel column)`` arrays, ordered by filter
    then input channel (see `Connection`)."""
    per_group = n_dst // conn.groups
    rows = np.repeat(np.arange(n_dst), conn.group_in)
    column = np.tile(np.arange(conn.group_in), n_dst)
    channel = (rows // per_group) * conn.group_in + column
    keep = (channel >= conn.in_offset) & (channel < conn.in_offset + n_src)
    out = rows[keep], channel[keep] - conn.in_offset, column[keep]
    for a in out:
        a.flags.writeable = False  # cached: shared by every caller
    return out


def edge_count(conn: Connection, n_src: int, n_dst: int) -> int:
    """How many edges the connection puts in the rolled graph."""
    if conn.kind == "identity":
        return n_src
    if conn.groups > 1:
        return len(grouped_pattern(conn, n_src, n_dst)[0])
    return n_src * n_dst


@dataclass(frozen=True)
class Topology:
    """Node groups (name -> node count, in forward order) and the connections between them."""

    groups: dict[str, int]
    connections: list[Connection]
    biases: dict[str, str] = field(default_factory=dict)  # group -> state_dict key of its bias

    def __post_init__(self) -> None:
        for c in self.connections:
            for g in (c.src, c.dst):
                if g not in self.groups:
                    raise ValueError(f"connection {c} names unknown node group {g!r}")
            if c.kind == "identity" and self.groups[c.src] != self.groups[c.dst]:
                raise ValueError(f"identity connection {c.src}->{c.dst} joins groups of different sizes")
            if c.in_offset < 0 or c.groups < 1:
                raise ValueError(f"connection {c} has a negative in_offset or fewer than one group")
            if c.groups > 1 and (c.kind != "conv" or c.group_in < 1 or self.groups[c.dst] % c.groups):
                raise ValueError(f"grouped connection {c}: only a conv whose filters split evenly into "
                                 "its groups, with group_in >= 1, can be grouped")

    @property
    def num_nodes(self) -> int:
        return sum(self.groups.values())

    @property
    def num_edges(self) -> int:
        return sum(edge_count(c, self.groups[c.src], self.groups[c.dst]) for c in self.connections)

    def offsets(self) -> dict[str, int]:
        """First node index of every group."""
        out, n = {}, 0
        for name, size in self.groups.items():
            out[name] = n
            n += size
        return out


class TopologyBuilder:
    """Small helper the models use to declare their topology in forward order."""

    def __init__(self, in_channels: int) -> None:
        self.groups: dict[str, int] = {"input": in_channels}
        self.connections: list[Connection] = []
        self.biases: dict[str, str] = {}
        self.last = "input"

    def add(
        self,
        name: str,
        size: int,
        kind: ConnectionKind,
        weight: str,
        *,
        src: str | None = None,
        bias: str | None = None,
        bn: str | None = None,
        spatial: int = 1,
    ) -> str:
        """Add group ``name`` fed from ``src`` (default: the last group added) and make it the last."""
        self.groups[name] = size
        self.connections.append(Connection(src or self.last, name, kind, weight, bn, spatial))
        if bias is not None:
            self.biases[name] = bias
        self.last = name
        return name

    def connect(self, src: str, dst: str, kind: ConnectionKind, weight: str | None = None,
                bn: str | None = None) -> None:
        """Add edges between two existing groups (residual shortcuts)."""
        self.connections.append(Connection(src, dst, kind, weight, bn))

    def build(self) -> Topology:
        return Topology(dict(self.groups), list(self.connections), dict(self.biases))
