"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20/32/44/56 = 6n+2 layers, widths 16-32-64."""

from __future__ import annotations

import torch
from torch import nn

from epochgraph.errors import EpochgraphError
from epochgraph.models._common import check_common, scaled


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN; the shortcut is the identity, or a 1x1 conv+BN projection where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-``depth`` for CIFAR: depth = 6n + 2 (20, 32, 44, 56, 110)."""

    def __init__(self, depth: int = 20, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                 width: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        check_common(in_channels, image_size, width, num_classes, dropout)
        if depth < 8 or (depth - 2) % 6:
            raise EpochgraphError(f"model.depth={depth} is not a CIFAR ResNet depth; use 6n+2, e.g. 20, 32, 44")
        n = (depth - 2) // 6
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks: list[nn.Module] = []
        c = widths[0]
        for stage, w in enumerate(widths):
            for b in range(n):
                blocks.append(BasicBlock(c, w, 2 if stage > 0 and b == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(c, num_classes)
        self.in_channels = in_channels
        self.example_input_shape = (in_channels, image_size, image_size)  # for tracing its rolled graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.blocks(x)).flatten(1)
        return self.fc(self.drop(x))
