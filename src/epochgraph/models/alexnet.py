"""AlexNet, CIFAR variant: five 3x3 conv layers (64-192-384-256-256) and a 3-layer classifier."""

from __future__ import annotations

import torch
from torch import nn

from epochgraph.models._common import check_common, scaled


class AlexNet(nn.Module):
    """AlexNet sized for 32x32 (or 28x28) images; the classifier reads a 2x2 adaptive-pooled map."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 width: float = 1.0, dropout: float = 0.5, hidden: int = 1024) -> None:
        super().__init__()
        check_common(in_channels, image_size, width, num_classes, dropout)
        chans = [scaled(c, width) for c in (64, 192, 384, 256, 256)]
        hid = scaled(hidden, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, chans[0], 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(chans[0], chans[1], 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(chans[1], chans[2], 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(chans[2], chans[3], 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(chans[3], chans[4], 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(chans[4] * 4, hid), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hid, hid), nn.ReLU(inplace=True),
            nn.Linear(hid, num_classes),
        )
        self.in_channels = in_channels
        self.example_input_shape = (in_channels, image_size, image_size)  # for tracing its rolled graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
