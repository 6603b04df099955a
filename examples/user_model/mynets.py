"""A network of your own, trained and pruned by epochgraph-train (see run.sh next to this file).

Nothing here knows about epochgraph: the rolled graph is traced from the model (torch.fx), and the
trainer passes num_classes and in_channels from the data because the constructor asks for them.
"""

import torch
from torch import nn


class MyNet(nn.Module):
    """Two conv blocks with BatchNorm and a residual connection, global pooling, a linear head."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.block(x) + x)
        return self.head(self.pool(x).mean((2, 3)))
