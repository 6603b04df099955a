"""VGG (Simonyan & Zisserman 2015) for CIFAR-sized inputs, depth 11/13/16/19, BatchNorm optional."""

from __future__ import annotations

import torch
from torch import nn

from epochgraph.errors import choice_error
from epochgraph.models._common import check_common, scaled

CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG-``depth`` with a 512-512-classes classifier; pools use ceil mode so 28x28 inputs fit."""

    def __init__(self, depth: int = 11, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 width: float = 1.0, dropout: float = 0.0, batch_norm: bool = True) -> None:
        super().__init__()
        check_common(in_channels, image_size, width, num_classes, dropout)
        if depth not in CONFIGS:
            raise choice_error("VGG depth", depth, CONFIGS, key="model.depth")
        layers: list[nn.Module] = []
        self._convs: list[tuple[int, int | None]] = []  # (conv index, bn index) in self.features
        c = in_channels
        for v in CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            out = scaled(int(v), width)
            conv_idx = len(layers)
            layers.append(nn.Conv2d(c, out, 3, padding=1, bias=not batch_norm))
            bn_idx = None
            if batch_norm:
                bn_idx = len(layers)
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            self._convs.append((conv_idx, bn_idx))
            c = out
        self.features = nn.Sequential(*layers)
        hid = scaled(512, width)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, hid), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hid, num_classes),
        )
        self.in_channels = in_channels
        self.example_input_shape = (in_channels, image_size, image_size)  # for tracing its rolled graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
