"""A network of the user's own, named by its class (``model=custom model._target_=mypackage.nets.MyNet``).

The class is imported and called with the other ``model.*`` keys that are not null as keyword arguments, plus
``num_classes``, ``in_channels`` and ``image_size`` from the data where its signature takes them and
the config does not set them.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from epochgraph.errors import EpochgraphError

FROM_DATA = ("num_classes", "in_channels", "image_size")


def user_model(target: str, *, in_channels: int, image_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Instantiate the ``nn.Module`` class (or factory function) at the import path ``target``."""
    from hydra.utils import get_method

    if not isinstance(target, str) or "." not in target:
        raise EpochgraphError(f"model._target_={target!r} must be an import path, e.g. mypackage.nets.MyNet")
    try:
        factory = get_method(target)
    except Exception as err:
        cause = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise EpochgraphError(f"model._target_={target} cannot be imported ({cause}); install its package or "
                              "put it on PYTHONPATH") from None
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # null: the class's default
    data = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    try:
        params = inspect.signature(factory).parameters
        extra = {k: v for k, v in data.items() if k not in kwargs and k in params}
    except (TypeError, ValueError):
        extra = {}
    try:
        model = factory(**kwargs, **extra)
    except TypeError as err:
        raise EpochgraphError(f"model._target_={target}: {err}; check the model.* arguments") from None
    if not isinstance(model, nn.Module):
        raise EpochgraphError(f"model._target_={target} returned a {type(model).__name__}, not a torch nn.Module")
    if getattr(model, "example_input_shape", None) is None and getattr(model, "example_input_array", None) is None:
        model.example_input_shape = (in_channels, image_size, image_size)
    return model
