"""The networks a training builds from its ``model`` config: the zoo (CIFAR-sized LeNet-5, AlexNet, VGG
and ResNet, each with a width multiplier), torchvision's classification models (``model=torchvision``)
and the user's own classes (``model=custom model._target_=...``)."""

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


def build_from_config(model_cfg: Mapping[str, Any], *, in_channels: int, image_size: int,
                      num_classes: int = 10) -> nn.Module:
    """The model a ``model`` config names: ``_target_`` (a user class), ``name: torchvision`` with
    ``arch``, or a zoo ``name``; the other keys are its arguments."""
    from epochgraph.models.torchvision_models import torchvision_model
    from epochgraph.models.user_models import user_model

    kwargs = dict(model_cfg)
    name = kwargs.pop("name", None)
    target = kwargs.pop("_target_", None)
    data = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
    if target is not None:
        return user_model(target, **data, **kwargs)
    if name == "custom":
        raise EpochgraphError("model=custom needs the class: add model._target_=mypackage.nets.MyNet")
    if name == "torchvision":
        arch = kwargs.pop("arch", None)
        if not arch:
            raise EpochgraphError("model=torchvision needs model.arch, e.g. model.arch=resnet18")
        return torchvision_model(str(arch), **data, **kwargs)
    if name is None:
        raise EpochgraphError("the model config has neither name nor _target_; e.g. model=lenet")
    return build_model(str(name), **data, **kwargs)


def model_label(model_cfg: Mapping[str, Any]) -> str:
    """How runs name the model: the zoo name, the torchvision arch, or the user class's name."""
    if model_cfg.get("_target_"):
        return str(model_cfg["_target_"]).rsplit(".", 1)[-1]
    if model_cfg.get("name") == "torchvision":
        return str(model_cfg.get("arch"))
    return str(model_cfg.get("name"))


__all__ = ["VGG", "ZOO", "AlexNet", "LeNet5", "ResNet", "build_from_config", "build_model", "model_label"]


def _parse(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(value, value)


def model_from_params(params: Mapping[str, str]):
    """Rebuild a run's (untrained) model from its logged params (``model.*``, ``data.*``)."""
    if "model.name" not in params and "model._target_" not in params:
        raise EpochgraphError("the run has no 'model.name' param; was it logged by epochgraph-train?")
    cfg = {k[len("model."):]: _parse(v) for k, v in params.items() if k.startswith("model.")}
    if "name" in cfg:
        cfg["name"] = str(params["model.name"])
    if "_target_" in cfg:
        cfg["_target_"] = str(params["model._target_"])
    return build_from_config(cfg, in_channels=int(params.get("data.in_channels", 1)),
                             image_size=int(params.get("data.image_size", 28)),
                             num_classes=int(params.get("data.num_classes", 10)))
