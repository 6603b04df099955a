"""Pieces shared by the zoo models."""

from __future__ import annotations

from epochgraph.errors import EpochgraphError


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def check_common(in_channels: int, image_size: int, width: float, num_classes: int, dropout: float) -> None:
    if in_channels not in (1, 3):
        raise EpochgraphError(f"in_channels={in_channels} is not supported; use 1 (grey) or 3 (RGB)")
    if image_size not in (28, 32):
        raise EpochgraphError(f"data.image_size={image_size} is not supported; use 28 or 32")
    if not width > 0:
        raise EpochgraphError(f"model.width={width} must be > 0, e.g. model.width=0.5")
    if num_classes < 2:
        raise EpochgraphError(f"num_classes={num_classes} must be >= 2")
    if not 0 <= dropout < 1:
        raise EpochgraphError(f"model.dropout={dropout} must be in [0, 1), e.g. model.dropout=0.2")
