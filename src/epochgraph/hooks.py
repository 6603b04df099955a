"""What the training loop hands to the code that runs at every epoch end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn


@dataclass
class EpochState:
    """The state of a training run right after epoch ``epoch`` (1-based) finished.

    ``metrics`` holds train_loss, train_acc, val_loss, val_acc and time/epoch_s; hooks add their own
    entries (for example the graph stage adds ``sig/<centrality>/<aggregator>`` and ``time/graph_s``),
    and the MLflow logger, which runs last, logs all of them with ``step=epoch``.
    ``tags`` collects run tags the hooks want set (for example ``diverged``). A hook sets ``prune``
    to stop the run after this epoch (the remaining hooks still see the epoch). ``checkpoint()``, where the
    loop offers it, captures what the training resumes from exactly (`epochgraph.training.checkpoint`).
    """

    epoch: int
    model: nn.Module
    metrics: dict[str, float]
    diverged: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    prune: bool = False
    checkpoint: Callable[[], Any] | None = None


class EpochHook(Protocol):
    """Called after every epoch, in order; may set ``state.prune`` to stop the run."""

    def on_epoch_end(self, state: EpochState) -> None: ...
