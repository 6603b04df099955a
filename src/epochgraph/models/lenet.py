"""LeNet-5 (LeCun et al. 1998) for 28x28 or 32x32 inputs."""

from __future__ import annotations

import torch
from torch import nn

from epochgraph.models._common import check_common, scaled


class LeNet5(nn.Module):
    """conv5-pool-conv5-pool-fc-fc-fc; 28x28 inputs get 2 pixels of padding in conv1 (as on MNIST)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 width: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        check_common(in_channels, image_size, width, num_classes, dropout)
        c1, c2, f1, f2 = scaled(6, width), scaled(16, width), scaled(120, width), scaled(84, width)
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=(32 - image_size) // 2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c2 * 25, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, num_classes)
        self.drop = nn.Dropout(dropout)
        self.in_channels = in_channels
        self.example_input_shape = (in_channels, image_size, image_size)  # for tracing its rolled graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.drop(torch.relu(self.fc1(x)))
        x = self.drop(torch.relu(self.fc2(x)))
        return self.fc3(x)
