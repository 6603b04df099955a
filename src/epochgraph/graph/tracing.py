"""The rolled graph's `Topology` traced from the model itself, with `torch.fx` (symbolic tracing, as
torchvision's ``feature_extraction`` does), for any feed-forward PyTorch network.

The trace is walked node by node, carrying for every tensor which rolled-graph nodes its channels
are (a list of node groups, in channel order). The rules:

* ``nn.Conv1d/2d/3d``, any kernel, stride, padding, dilation and ``groups``: a node group with one node
  per output filter; edge (input channel k -> filter l) = ||K[l, k - g * c_in / groups]||_2, only for the
  input channels of filter l's group g (a depthwise conv has one edge per filter).
* ``nn.Linear``: one node per output neuron, edge |W[o, i]|; reading a flattened conv output, channel
  k's HW features are grouped: ||W[o, k * HW:(k + 1) * HW]||_2 (HW from the shapes of the trace).
* A BatchNorm right after a conv or linear layer (its only reader) is folded into that layer's output
  filters; a BatchNorm elsewhere (pre-activation, after a concatenation) is ignored, as are GroupNorm,
  InstanceNorm and LocalResponseNorm.
* Activations, pooling, dropout, element-wise ops on one tensor (or with a constant), reshapes that
  keep the channels (``flatten``, ``view``, ``mean`` over spatial dims, ...): the channels pass through.
* A residual ``a + b``: the sum's channels are the nodes of ``a``; ``b`` adds identity edges of weight 1
  from its own channels, or, when ``b`` is the output of a conv or linear layer (a projection shortcut,
  BatchNorm folded), that layer's edges go into ``a``'s nodes instead of its own.
* ``torch.cat`` on the channel dim: the channels of the inputs, in order (no new nodes); a layer reading
  it has one connection per input group.
* Multiplication by a gate (squeeze-and-excitation: the operand that comes out of a sigmoid, or the
  one broadcast over the other): the other operand's channels pass through; the gate's own layers are
  node groups of their own, connected to the channels they read.
* Anything else (recurrent layers, attention, channel slicing, control flow on tensor values): an
  `UntraceableModel` error naming the op and the module path - never a silently wrong graph.

Node groups are named by the module path of their layer (``layer1.0.conv1``); the input channels are
``input``. The shapes come from one forward pass of an example input (``torch.fx`` ``ShapeProp``), in
eval mode without gradients, so the model's weights, BatchNorm statistics and modes are left as they
were.
"""

from __future__ import annotations

import math
import operator
import weakref
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from epochgraph.errors import EpochgraphError
from epochgraph.graph.topology import Connection, Topology


class UntraceableModel(EpochgraphError):
    """The model has an op or a wiring outside the rolled graph's rules (the message names it)."""


_PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Softplus, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.LPPool2d, nn.Upsample,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
)
_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MODULES = (*_PASS_MODULES, *_GATE_MODULES, *_CONVS, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.Flatten)
_PASS_FUNCTIONS: set[Any] = {
    torch.relu, torch.relu_, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardtanh, F.softplus, torch.tanh, F.tanh, torch.clamp, torch.abs,
    F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.interpolate, F.group_norm, F.instance_norm,
    operator.neg, operator.pos,
}
_PASS_FUNCTION_NAMES = {"stochastic_depth"}  # torchvision.ops (wrapped for torch.fx by torchvision)
_GATE_FUNCTIONS: set[Any] = {torch.sigmoid, F.sigmoid, F.hardsigmoid}
_PASS_METHODS = {"relu", "relu_", "tanh", "tanh_", "clamp", "clamp_", "contiguous", "clone", "float",
                 "double", "half", "to", "type_as", "abs", "neg"}
_GATE_METHODS = {"sigmoid", "sigmoid_"}
_RESHAPE_FUNCTIONS: set[Any] = {torch.flatten, torch.reshape, torch.squeeze, torch.mean, torch.sum,
                                torch.amax, torch.amin}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "mean", "sum", "amax", "amin"}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_WITH_CONSTANT = {operator.sub, operator.isub, operator.truediv, operator.itruediv, torch.sub, torch.div,
                  "sub", "sub_", "div", "div_"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_NOT_TENSORS = {"size", "dim", "numel"}  # methods whose result is no tensor


@dataclass(frozen=True)
class _Value:
    """What a traced tensor is in the rolled graph."""

    segments: tuple[tuple[str, int], ...]  # (node group, channels) in channel order
    spatial: int | None = None  # flattened: the features of each channel (None: channels on dim 1)
    layer: str | None = None  # the conv / linear layer whose output this is (BatchNorm folded at most)
    bn: bool = False  # a BatchNorm was folded into ``layer``
    gate: bool = False  # came out of a sigmoid

    @property
    def channels(self) -> int:
        return sum(n for _, n in self.segments)


def _where(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"'{node.target}'"
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()), None) if stack else None
    if isinstance(path, tuple):
        path = path[0]
    return f"'{path}'" if path else f"node {node.name!r}"


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    return f"{module}.{name}" if module and not module.startswith("_operator") else name


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Walker:
    """Walks one traced graph and builds the topology (see the module docstring for the rules)."""

    def __init__(self, gm: fx.GraphModule, model_name: str) -> None:
        self.gm = gm
        self.model_name = model_name
        self.groups: dict[str, int] = {}
        self.connections: list[Connection] = []
        self.biases: dict[str, str] = {}
        self.values: dict[fx.Node, _Value] = {}
        self.layers_seen: set[str] = set()

    def fail(self, node: fx.Node, what: str) -> UntraceableModel:
        return UntraceableModel(f"{self.model_name}: {what} at {_where(node)} is outside the rolled graph's "
                                "rules (docs/guides/graph-stage.md, 'Any network')")

    def walk(self) -> Topology:
        for node in self.gm.graph.nodes:  # a layer without a rule is named first (an LSTM, not its reshapes)
            module = self.gm.get_submodule(node.target) if node.op == "call_module" else None
            if module is not None and not isinstance(module, _MODULES):
                raise self.fail(node, f"no rule for {type(module).__module__}.{type(module).__name__}")
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.placeholder(node)
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.call_function(node)
        if len(self.groups) < 2:
            raise UntraceableModel(f"{self.model_name} has no conv or linear layer reading its input: "
                                   "it has no rolled graph")
        return Topology(dict(self.groups), list(self.connections), dict(self.biases))

    # -- inputs and layers ----------------------------------------------------------------------

    def placeholder(self, node: fx.Node) -> None:
        shape = _shape(node)
        if shape is None:
            return  # a non-tensor argument with a default
        if "input" in self.groups:
            raise self.fail(node, "a second tensor input")
        if len(shape) < 2:
            raise self.fail(node, f"an input of shape {shape} (no channel dim)")
        self.groups["input"] = shape[1]
        self.values[node] = _Value((("input", shape[1]),))

    def _input(self, node: fx.Node, arg: Any) -> _Value:
        value = self.values.get(arg) if isinstance(arg, fx.Node) else None
        if value is None:
            raise self.fail(node, "a layer that does not read the network's input")
        return value

    def _new_group(self, node: fx.Node, name: str, size: int) -> None:
        if name in self.layers_seen:
            raise self.fail(node, f"layer {name!r} runs twice in one forward pass (shared weights)")
        self.layers_seen.add(name)
        self.groups[name] = size

    def call_module(self, node: fx.Node) -> None:
        module = self.gm.get_submodule(node.target)
        ins = [a for a in node.all_input_nodes if a in self.values]
        if not ins:
            return  # works on constants only
        name = str(node.target)
        if isinstance(module, _CONVS):
            self.layer(node, name, module, "conv")
        elif isinstance(module, nn.Linear):
            self.layer(node, name, module, "linear")
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            self.batch_norm(node, name, module)
        elif isinstance(module, _PASS_MODULES):
            self.pass_through(node, self.values[ins[0]])
        elif isinstance(module, _GATE_MODULES):
            self.pass_through(node, self.values[ins[0]], gate=True)
        elif isinstance(module, nn.Flatten):
            self.reshape(node, ins[0])
        else:
            raise self.fail(node, f"no rule for {type(module).__module__}.{type(module).__name__}")

    def layer(self, node: fx.Node, name: str, module: nn.Module, kind: str) -> None:
        value = self._input(node, node.args[0] if node.args else None)
        if kind == "conv":
            if value.spatial is not None:
                raise self.fail(node, "a conv reading a flattened tensor")
            width, spatial, out = module.in_channels, 1, module.out_channels
        else:
            shape = _shape(node.args[0])
            if value.spatial is None and shape is not None and len(shape) != 2:
                raise self.fail(node, f"nn.Linear applied to a {len(shape)}-d tensor (the rolled graph "
                                      "needs [batch, features]: flatten first)")
            spatial, width, out = value.spatial or 1, module.in_features, module.out_features
            kind = "flatten" if spatial > 1 else "linear"
        if value.channels * spatial != width:
            raise self.fail(node, f"{value.channels} channels x {spatial} reach a layer of {width} inputs")
        self._new_group(node, name, out)
        groups = getattr(module, "groups", 1)
        offset = 0
        for group, n in value.segments:
            self.connections.append(Connection(
                group, name, kind, f"{name}.weight", spatial=spatial, in_offset=offset, groups=groups,
                group_in=module.in_channels // groups if groups > 1 else 0))
            offset += n
        if getattr(module, "bias", None) is not None:
            self.biases[name] = f"{name}.bias"
        self.values[node] = _Value(((name, out),), layer=name)

    def batch_norm(self, node: fx.Node, name: str, module: nn.Module) -> None:
        arg = node.args[0]
        value = self.values[arg]
        foldable = (value.layer is not None and not value.bn and len(arg.users) == 1
                    and module.affine and module.track_running_stats)
        if not foldable:
            self.pass_through(node, value)  # pre-activation BatchNorm: ignored
            return
        weight = f"{value.layer}.weight"
        self.connections = [replace(c, bn=name) if c.weight == weight else c for c in self.connections]
        self.values[node] = replace(value, bn=True)

    # -- functions and methods -------------------------------------------------------------------

    def call_function(self, node: fx.Node) -> None:
        ins = [a for a in node.all_input_nodes if a in self.values]
        if not ins:
            return
        target = node.target
        name = getattr(target, "__name__", None)
        if node.op == "call_method" and target in _NOT_TENSORS:
            return
        if node.op == "call_function" and target is getattr and node.args[1] in ("shape", "device", "dtype"):
            return
        if target in _CAT:
            self.cat(node)
        elif target in _ADD:
            self.add(node, ins)
        elif target in _MUL:
            self.mul(node, ins)
        elif target in _WITH_CONSTANT and len(ins) == 1:
            self.pass_through(node, self.values[ins[0]])
        elif target in _PASS_FUNCTIONS or target in _PASS_METHODS or name in _PASS_FUNCTION_NAMES:
            self.pass_through(node, self.values[ins[0]])
        elif target in _GATE_FUNCTIONS or target in _GATE_METHODS:
            self.pass_through(node, self.values[ins[0]], gate=True)
        elif target in _RESHAPE_FUNCTIONS or target in _RESHAPE_METHODS:
            self.reshape(node, ins[0])
        else:
            raise self.fail(node, f"no rule for {_op_name(node)}")

    def pass_through(self, node: fx.Node, value: _Value, gate: bool = False) -> None:
        shape = _shape(node)
        if value.spatial is None and shape is not None and (len(shape) < 2 or shape[1] != value.channels):
            raise self.fail(node, f"{_op_name(node) if node.op != 'call_module' else node.target} changes "
                                  f"the {value.channels} channels to shape {shape}")
        self.values[node] = _Value(value.segments, value.spatial, gate=gate)

    def reshape(self, node: fx.Node, arg: fx.Node) -> None:
        value = self.values[arg]
        src, out = _shape(arg), _shape(node)
        if src is None or out is None:
            raise self.fail(node, f"{_op_name(node)} without shapes")
        if node.target in _REDUCTIONS:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = () if dims is None else (dims if isinstance(dims, (tuple, list)) else (dims,))
            if dims == () or any(d % len(src) in (0, 1) for d in dims):
                raise self.fail(node, f"{_op_name(node)} over the batch or channel dim")
        if value.spatial is not None:
            if out != src:
                raise self.fail(node, f"{_op_name(node)} reshapes flattened features {src} to {out}")
            self.values[node] = value
        elif len(out) >= 2 and out[:2] == src[:2]:
            self.values[node] = _Value(value.segments)  # channels kept (spatial dims squeezed or merged)
        elif len(out) == 2 and out[0] == src[0] and out[1] == src[1] * math.prod(src[2:]):
            self.values[node] = _Value(value.segments, spatial=math.prod(src[2:]))
        else:
            raise self.fail(node, f"{_op_name(node)} mixes the channels ({src} -> {out})")

    def cat(self, node: fx.Node) -> None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out = _shape(node)
        if out is None or dim % len(out) != 1:
            raise self.fail(node, f"torch.cat along dim {dim} (only the channel dim 1 has a rule)")
        values = [self.values.get(t) for t in tensors]
        if any(v is None or v.spatial is not None for v in values):
            raise self.fail(node, "torch.cat of a tensor that is not a channel map of the network")
        self.values[node] = _Value(tuple(s for v in values for s in v.segments))

    def add(self, node: fx.Node, ins: list[fx.Node]) -> None:
        if len(ins) == 1:
            self.pass_through(node, self.values[ins[0]])
            return
        first, second = (self.values[a] for a in ins[:2])
        if first.segments == second.segments:
            self.pass_through(node, first)  # x + x
            return
        if len(first.segments) != 1 or len(second.segments) != 1 or first.channels != second.channels:
            raise self.fail(node, f"a residual add of channels {first.segments} and {second.segments}")
        (a, _), (b, _) = first.segments[0], second.segments[0]
        reads_a = any(c.dst == b and c.src == a for c in self.connections)
        if (second.layer == b and len(ins[1].users) == 1 and not reads_a
                and not any(c.src == b for c in self.connections)):
            # a projection shortcut: its edges go into the first operand's nodes
            self.connections = [replace(c, dst=a) if c.dst == b else c for c in self.connections]
            del self.groups[b]
            self.biases.pop(b, None)
        else:
            self.connections.append(Connection(b, a, "identity"))
        self.values[node] = _Value(first.segments, first.spatial)

    def mul(self, node: fx.Node, ins: list[fx.Node]) -> None:
        if len(ins) == 1:
            self.pass_through(node, self.values[ins[0]])
            return
        (x, vx), (y, vy) = ((a, self.values[a]) for a in ins[:2])
        out = _shape(node)
        if vx.gate != vy.gate:
            keep = vy if vx.gate else vx
        elif _shape(x) == out and _shape(y) != out:
            keep = vx
        elif _shape(y) == out and _shape(x) != out:
            keep = vy
        else:
            keep = vx
        self.values[node] = _Value(keep.segments, keep.spatial)


# --------------------------------------------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Topology]] = weakref.WeakKeyDictionary()


IMAGE_SIZES = (32, 28, 64, 224)  # tried in turn for a model that declares no example input (CIFAR, MNIST, ...)


def example_inputs_for(model: nn.Module) -> list[torch.Tensor]:
    """Inputs the model may accept, to try in turn: its ``example_input_array`` (the PyTorch Lightning
    convention) or ``example_input_shape`` (one sample's shape, as the models epochgraph builds declare),
    else batches of two images of each of `IMAGE_SIZES` with the channels of its first conv (vectors of
    its first linear layer's width)."""
    given = getattr(model, "example_input_array", None)
    if isinstance(given, torch.Tensor):
        return [given]
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    device, dtype = (param.device, param.dtype) if param is not None else ("cpu", torch.float32)
    shape = getattr(model, "example_input_shape", None)
    if shape is not None:
        shapes = [tuple(shape)]
    else:
        first = next((m for m in model.modules() if isinstance(m, (*_CONVS, nn.Linear))), None)
        if first is None:
            raise UntraceableModel(f"{type(model).__name__} has no conv or linear layer: it has no rolled graph")
        if isinstance(first, nn.Linear):
            shapes = [(first.in_features,)]
        else:
            dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(first)] if type(first) in _CONVS else 2
            shapes = [(first.in_channels, *([size] * dims)) for size in IMAGE_SIZES]
    return [torch.zeros(2, *shape, device=device, dtype=dtype) for shape in shapes]


class _Stop(Exception):
    """Raised by `_flattened_size`'s hook to end a forward at the layer that told the shape."""


def _told_size(model: nn.Module, x: torch.Tensor) -> int | None:
    """The square image size ``model`` accepts, as its own layers tell it: run ``x`` (a batch of images of size
    s) until the first linear layer whose input width disagrees with its ``in_features``; its input is the
    flattened feature map, whose area scales with s², so the size is s·sqrt(in_features / width). None when no
    layer tells (the model runs on ``x``, or fails before any linear layer)."""
    seen: dict[str, int] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        width = args[0].shape[-1] if args and isinstance(args[0], torch.Tensor) else None
        if width is not None and width != module.in_features:
            seen["width"], seen["want"] = int(width), int(module.in_features)
            raise _Stop

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
    if not seen:
        return None
    size = x.shape[-1] * math.sqrt(seen["want"] / seen["width"])
    return max(1, round(size))


def _propagate(gm: fx.GraphModule, x: torch.Tensor) -> None:
    """Shapes through the traced graph; a batch it does not accept raises (torch.fx prints the failing node's
    traceback to stderr: kept from the user, who sees one line if no batch fits)."""
    import contextlib
    import io

    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        ShapeProp(gm).propagate(x)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def trace_topology(model: nn.Module, example_input: torch.Tensor | None = None) -> Topology:
    """The topology of ``model``'s rolled graph, traced with `torch.fx` (see the module docstring).

    ``example_input``: a batch the model accepts (default: the first of `example_inputs_for` it runs on);
    its shape decides the spatial sizes that flattened features are grouped by.

    Raises `UntraceableModel` (one line naming the op and the module path) for anything outside the
    rules, and when the model cannot be traced at all.
    """
    name = type(model).__name__
    tries = [example_input] if example_input is not None else example_inputs_for(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()  # the inference network: what BatchNorm folding assumes (no auxiliary training heads)
    try:
        try:
            gm = fx.symbolic_trace(model)
        except Exception as err:  # torch.fx raises many types (TraceError, TypeError, NotImplementedError...)
            raise UntraceableModel(f"{name} cannot be traced by torch.fx ({_first_line(err)}); the rolled "
                                   "graph needs a network without control flow on tensor values") from None
        failure = None
        for x in tries:
            try:
                _propagate(gm, x)
                failure = None
                break
            except Exception as err:
                failure = err
        if failure is not None and example_input is None and tries and tries[0].dim() >= 3:
            # the model's own layers tell its input size where a feature map is flattened into a linear layer
            told = _told_size(model, tries[0])
            for size in sorted({told, told - 1, told + 1} - {None, 0}) if told else []:
                x = torch.zeros(*tries[0].shape[:-2], size, size, device=tries[0].device, dtype=tries[0].dtype)
                try:
                    _propagate(gm, x)
                    failure = None
                    break
                except Exception:
                    tries = [*tries, x]
        if failure is not None:
            shapes = ", ".join(str(tuple(x.shape)) for x in tries)
            raise UntraceableModel(f"{name} does not run on an example input of shape {shapes} "
                                   f"({_first_line(failure)}); pass example_input=<a batch it accepts> "
                                   "or give the model an example_input_shape") from None
    finally:
        for m, mode in modes.items():
            m.training = mode
    return _Walker(gm, name).walk()


def topology_of(model: nn.Module, example_input: torch.Tensor | None = None) -> Topology:
    """`trace_topology`, traced once per model (and input shape) and then reused."""
    key = ("declared",) if example_input is None else (tuple(example_input.shape[1:]),)
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = trace_topology(model, example_input)
    return per_model[key]


__all__ = ["UntraceableModel", "example_inputs_for", "topology_of", "trace_topology"]
