"""The rolled-graph topologies of the zoo's models, declared by hand: what tracing must reproduce."""

from __future__ import annotations

from torch import nn

from epochgraph.graph.topology import Topology, TopologyBuilder
from epochgraph.models import VGG, AlexNet, LeNet5, ResNet


def declared_lenet(self: LeNet5) -> Topology:
    t = TopologyBuilder(self.in_channels)
    t.add("conv1", self.conv1.out_channels, "conv", "conv1.weight", bias="conv1.bias")
    t.add("conv2", self.conv2.out_channels, "conv", "conv2.weight", bias="conv2.bias")
    t.add("fc1", self.fc1.out_features, "flatten", "fc1.weight", bias="fc1.bias", spatial=25)
    t.add("fc2", self.fc2.out_features, "linear", "fc2.weight", bias="fc2.bias")
    t.add("fc3", self.fc3.out_features, "linear", "fc3.weight", bias="fc3.bias")
    return t.build()


def declared_alexnet(self: AlexNet) -> Topology:
    t = TopologyBuilder(self.in_channels)
    for i, idx in enumerate((0, 3, 6, 8, 10), start=1):
        conv = self.features[idx]
        t.add(f"conv{i}", conv.out_channels, "conv", f"features.{idx}.weight", bias=f"features.{idx}.bias")
    lin = [(1, "flatten", 4), (4, "linear", 1), (6, "linear", 1)]
    for i, (idx, kind, spatial) in enumerate(lin, start=1):
        layer = self.classifier[idx]
        t.add(f"fc{i}", layer.out_features, kind, f"classifier.{idx}.weight",
              bias=f"classifier.{idx}.bias", spatial=spatial)
    return t.build()


def declared_vgg(self: VGG) -> Topology:
    t = TopologyBuilder(self.in_channels)
    for i, (ci, bi) in enumerate(self._convs, start=1):
        conv = self.features[ci]
        bias = f"features.{ci}.bias" if conv.bias is not None else None
        bn = f"features.{bi}" if bi is not None else None
        t.add(f"conv{i}", conv.out_channels, "conv", f"features.{ci}.weight", bias=bias, bn=bn)
    for i, idx in enumerate((2, 5), start=1):
        layer = self.classifier[idx]
        t.add(f"fc{i}", layer.out_features, "linear", f"classifier.{idx}.weight",
              bias=f"classifier.{idx}.bias")
    return t.build()


def declared_resnet(self: ResNet) -> Topology:
    t = TopologyBuilder(self.in_channels)
    t.add("conv1", self.conv1.out_channels, "conv", "conv1.weight", bn="bn1")
    for i, block in enumerate(self.blocks):
        p = f"blocks.{i}"
        block_in = t.last
        t.add(f"block{i}.conv1", block.conv1.out_channels, "conv", f"{p}.conv1.weight", bn=f"{p}.bn1")
        out = t.add(f"block{i}.conv2", block.conv2.out_channels, "conv", f"{p}.conv2.weight", bn=f"{p}.bn2")
        if isinstance(block.shortcut, nn.Identity):
            t.connect(block_in, out, "identity")
        else:
            t.connect(block_in, out, "conv", f"{p}.shortcut.0.weight", bn=f"{p}.shortcut.1")
    t.add("fc", self.fc.out_features, "linear", "fc.weight", bias="fc.bias")
    return t.build()


def declared_topology(model: nn.Module) -> Topology:
    for cls, declare in ((LeNet5, declared_lenet), (AlexNet, declared_alexnet), (VGG, declared_vgg),
                         (ResNet, declared_resnet)):
        if isinstance(model, cls):
            return declare(model)
    raise TypeError(type(model).__name__)
