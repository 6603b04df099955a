"""The model zoo: CIFAR-sized LeNet-5, AlexNet, VGG and ResNet, each with a width multiplier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from epochgraph.errors import EpochgraphError, choice_error
from epochgraph.models.alexnet import AlexNet
from epochgraph.models.lenet import LeNet5
from epochgraph.models.resnet import ResNet
from epochgraph.models.vgg import VGG

# name -> (class, fixed keyword arguments)
ZOO: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "lenet": (LeNet5, {}),
    "alexnet": (AlexNet, {}),
    "vgg": (VGG, {}),
    "vgg11": (VGG, {"depth": 11}),
    "vgg16": (VGG, {"depth": 16}),
    "resnet20": (ResNet, {"depth": 20}),
    "resnet32": (ResNet, {"depth": 32}),
    "resnet44": (ResNet, {"depth": 44}),
}


def build_model(name: str, *, in_channels: int, image_size: int, num_classes: int = 10,
                **params: Any) -> nn.Module:
    """Instantiate zoo model ``name`` for inputs of ``in_channels`` x ``image_size`` x ``image_size``."""
    if name not in ZOO:
        raise choice_error("model", name, ZOO, key="model")
    cls, fixed = ZOO[name]
    kwargs = {**params, **fixed}
    return cls(in_channels=in_channels, image_size=image_size, num_classes=num_classes, **kwargs)


__all__ = ["VGG", "ZOO", "AlexNet", "LeNet5", "ResNet", "build_model"]


def _parse(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(value, value)


def model_from_params(params: Mapping[str, str]):
    """Rebuild a run's (untrained) model from its logged params (``model.*``, ``data.*``)."""
    if "model.name" not in params:
        raise EpochgraphError("the run has no 'model.name' param; was it logged by epochgraph-train?")
    kwargs = {k[len("model."):]: _parse(v) for k, v in params.items()
              if k.startswith("model.") and k != "model.name"}
    return build_model(params["model.name"], in_channels=int(params.get("data.in_channels", 1)),
                       image_size=int(params.get("data.image_size", 28)), **kwargs)
