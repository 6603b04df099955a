"""Which conv filters / neurons a model has and how they connect: the skeleton of its rolled graph.

Every zoo model returns a `Topology` from ``model.topology()``. It names node groups (the input
channels, then one group per conv or linear layer, holding one node per filter or neuron) and the
connections between them, each tied to the ``state_dict`` key of the tensor that weighs it. The rolled
graph (`epochgraph.graph.rolled_graph`) is built from a topology plus a ``state_dict`` alone, so signatures
can be recomputed from saved weights without the model's code running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    """

    src: str
    dst: str
    kind: ConnectionKind
    weight: str | None = None
    bn: str | None = None
    spatial: int = 1


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

    @property
    def num_nodes(self) -> int:
        return sum(self.groups.values())

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
