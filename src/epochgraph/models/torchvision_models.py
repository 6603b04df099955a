"""torchvision's classification models (``model=torchvision model.arch=resnet18``), untrained, with the
stem adapted to the data: the first conv reads the data's channels (1 for grey images), and for small
images (under 64 pixels: MNIST, CIFAR) the stem keeps the resolution - its first conv gets stride 1 and
a pooling layer before the second conv is dropped - as CIFAR variants of these networks do."""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from epochgraph.errors import EpochgraphError

SMALL_IMAGE = 64  # pixels: below, the stem keeps the resolution (``model.small_stem=auto``)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def adapt_stem(model: nn.Module, in_channels: int, small: bool) -> nn.Module:
    """Make ``model``'s first conv read ``in_channels`` channels and, if ``small``, keep the input's
    resolution in the stem (stride 1, no pooling before the second conv). Returns the model."""
    convs = [(p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise EpochgraphError(f"{type(model).__name__} has no Conv2d: it is not a CNN for images")
    path, conv = convs[0]
    stride = (1, 1) if small else conv.stride
    if conv.in_channels != in_channels or stride != conv.stride:
        if conv.groups != 1:
            raise EpochgraphError(f"{type(model).__name__}: its first conv is grouped; cannot adapt the stem")
        _replace(model, path, nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride, conv.padding,
                                        conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode))
    if small and len(convs) > 1:
        second = convs[1][0]
        for p, m in model.named_modules():
            if p == second:
                break
            if isinstance(m, _POOLS):
                _replace(model, p, nn.Identity())
                break
    return model


def torchvision_model(arch: str, *, in_channels: int, image_size: int, num_classes: int,
                      small_stem: bool | str = "auto", **kwargs: Any) -> nn.Module:
    """torchvision classification model ``arch`` (``resnet18``, ``vgg11_bn``, ``mobilenet_v2``, ...),
    untrained, for ``num_classes`` classes; ``kwargs`` go to its builder (e.g. ``dropout``)."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        close = difflib.get_close_matches(str(arch), known, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise EpochgraphError(f"unknown torchvision model {arch!r}; {hint}(set model.arch=<one of "
                              "torchvision.models.list_models()>, e.g. resnet18)")
    if small_stem not in ("auto", True, False):
        raise EpochgraphError(f"model.small_stem={small_stem!r} must be auto, true or false")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # null: the builder's default
    try:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise EpochgraphError(f"model.arch={arch}: {err}; check the model.* arguments") from None
    small = image_size < SMALL_IMAGE if small_stem == "auto" else bool(small_stem)
    model = adapt_stem(model, in_channels, small)
    model.example_input_shape = (in_channels, image_size, image_size)
    return model
