"""Trace a user's classifier into a graph of operators that bounds can be propagated through.

:func:`trace` runs ``torch.fx.symbolic_trace`` on the model (robaudit's wrapper included, so the
normalization is part of the graph and inputs are pixel space [0,1]), evaluates it once on a
probe batch of two images to learn each node's per-sample shape and which values depend on the
image, and maps every image-dependent node to a :mod:`robaudit.certify.ops` operator:

Linear, Conv2d, ReLU / LeakyReLU, BatchNorm (eval mode), MaxPool2d, AvgPool2d /
AdaptiveAvgPool2d / mean / sum over non-batch dimensions, flatten / view / reshape / squeeze /
unsqueeze, a residual ``+`` / ``−`` of two branches, ``+ − × ÷`` by a constant (the
normalization), Identity and Dropout in eval mode.

Anything else blocks certification; :class:`UnsupportedModel` names every blocking layer, and
:class:`UntraceableModel` says why a model could not be traced at all (TorchScript, data-dependent
Python control flow). The traced graph is checked against the model's own output on the probe.
Nothing is special-cased for robaudit's own networks.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import ops

__all__ = ["Node", "BoundGraph", "trace", "UnsupportedModel", "UntraceableModel"]


class UntraceableModel(Exception):
    """The model's graph cannot be traced (one line: why)."""


class UnsupportedModel(Exception):
    """The graph traces but has operators outside the supported set; ``blocking`` names each one."""

    def __init__(self, blocking: list[str]):
        self.blocking = list(blocking)
        super().__init__("certification is blocked by " + "; ".join(self.blocking))


@dataclass
class Node:
    """One image-dependent value. ``inputs``: indices of the nodes it is computed from (earlier in
    the list); ``shape``: per sample; ``op``: None for the input image."""

    name: str
    label: str
    op: ops.BoundOp | None
    inputs: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass
class BoundGraph:
    """Nodes in topological order: node 0 is the image, ``output`` the logits."""

    nodes: list[Node]
    output: int
    consumers: list[list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.consumers = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                self.consumers[j].append(i)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    @property
    def num_classes(self) -> int:
        return self.nodes[self.output].shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: list[torch.Tensor | None] = [x] + [None] * (len(self.nodes) - 1)
        for i, node in enumerate(self.nodes[1:], 1):
            values[i] = node.op.forward(*(values[j] for j in node.inputs))
        return values[self.output]

    def nonlinear(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.op is not None and n.op.nonlinear]

    def relu_units(self) -> int:
        """The number of ReLU / LeakyReLU neurons (per sample)."""
        total = 0
        for n in self.nodes:
            if isinstance(n.op, ops.LeakyReLU):
                total += int(torch.Size(n.shape).numel())
        return total

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for n in self.nodes[1:]:
            kinds[type(n.op).__name__] = kinds.get(type(n.op).__name__, 0) + 1
        return ", ".join(f"{k} ×{v}" for k, v in kinds.items())


# --- tracing -------------------------------------------------------------------------------------

_RELU = {F.relu, torch.relu, torch.relu_, F.relu_}
_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}
_NEG = {operator.neg, torch.neg}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous"}
_META_METHODS = {"size", "dim"}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
# positional parameter names of the functional operators (torch's own builtins have no Python signature)
_SIGNATURES: dict[Any, tuple[str, ...]] = {
    F.linear: ("input", "weight", "bias"),
    F.conv2d: ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    F.max_pool2d: ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    F.leaky_relu: ("input", "negative_slope", "inplace"),
    F.batch_norm: ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    F.dropout: ("input", "p", "training", "inplace"),
}
_DEFAULTS: dict[Any, dict[str, Any]] = {
    F.linear: {"bias": None},
    F.conv2d: {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1},
    F.max_pool2d: {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False},
    F.leaky_relu: {"negative_slope": 0.01},
    F.batch_norm: {"weight": None, "bias": None, "training": False, "eps": 1e-5},
    F.dropout: {"p": 0.5, "training": True},
}
_PROBE_BATCH = 2


class _Skip(Exception):
    """This node blocks certification (the message says why)."""


def _bind(target, args, kwargs) -> dict[str, Any]:
    names = _SIGNATURES[target]
    out = dict(_DEFAULTS.get(target, {}))
    out.update(zip(names, args))
    out.update(kwargs)
    return out


@dataclass
class _Value:
    """What the probe run learned about an fx node."""

    value: Any
    var: bool  # depends on the image
    const: Callable[[], Any] | None = None  # a live getter for image-independent values


class _Probe(fx.Interpreter):
    """Runs the traced module once, recording every node's value and whether it depends on the image."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.info: dict[fx.Node, _Value] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        deps = [a for a in n.all_input_nodes]
        var = n.op == "placeholder" or any(self.info[a].var for a in deps)
        self.info[n] = _Value(value, var, None if var else self._getter(n, value))
        return value

    def _getter(self, n: fx.Node, value: Any) -> Callable[[], Any]:
        """A function that recomputes a constant from the module's current parameters (so bounds
        stay differentiable in the weights); values built by other means are frozen."""
        root = self.module
        if n.op == "get_attr":
            path = str(n.target)
            return lambda: _fetch(root, path)
        if n.op in ("call_function", "call_method", "call_module"):
            info = self.info

            def recompute(n=n):
                args = fx.node.map_arg(n.args, lambda a: info[a].const())
                kwargs = fx.node.map_arg(n.kwargs, lambda a: info[a].const())
                if n.op == "call_function":
                    return n.target(*args, **kwargs)
                if n.op == "call_method":
                    self_, *rest = args
                    return getattr(self_, n.target)(*rest, **kwargs)
                return root.get_submodule(n.target)(*args, **kwargs)

            return recompute
        return lambda: value


def _fetch(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def trace(model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device | str | None = None) -> BoundGraph:
    """The bound graph of ``model`` (pixel-space input of per-sample ``input_shape``, logits out).

    Raises :class:`UntraceableModel` (one line) or :class:`UnsupportedModel` (every blocking layer)."""
    if isinstance(model, torch.jit.ScriptModule) or any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise UntraceableModel("TorchScript modules hide their operators from torch.fx; certify the original nn.Module")
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is reported in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UntraceableModel(f"torch.fx cannot trace it ({type(exc).__name__}: {first[:200]})") from None
    first = next(model.parameters(), None)
    if device is None:
        device = first.device if first is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    probe = torch.rand((_PROBE_BATCH, *input_shape), generator=gen, dtype=torch.float64).to(device, dtype)
    interp = _Probe(gm)
    try:
        with torch.no_grad():
            expected = interp.run(probe)
    except Exception as exc:  # noqa: BLE001
        raise UntraceableModel(f"its traced graph fails on a probe batch ({type(exc).__name__}: {str(exc)[:200]})") from None
    graph = _build(gm, interp.info, input_shape)
    with torch.no_grad():
        got = graph.forward(probe)
    if not isinstance(expected, torch.Tensor) or got.shape != expected.shape:
        raise UntraceableModel("its traced graph does not return the logits tensor the model returns")
    scale = float(expected.abs().max()) + 1.0
    diff = float((got - expected).abs().max())
    if not diff <= 1e-4 * scale:
        raise UntraceableModel(f"its traced graph disagrees with the model by {diff:.3g} on a probe batch "
                               "(is a layer in training mode or stateful?)")
    return graph


def _build(gm: fx.GraphModule, info: dict[fx.Node, _Value], input_shape) -> BoundGraph:
    nodes: list[Node] = []
    index: dict[fx.Node, int] = {}
    blocking: list[str] = []
    output: int | None = None
    for n in gm.graph.nodes:
        v = info.get(n)
        if n.op == "placeholder":
            if index:
                blocking.append(f"{n.name}: a second input")
                continue
            index[n] = 0
            nodes.append(Node("input", "input", None, (), tuple(input_shape)))
            continue
        if n.op == "output":
            out = n.args[0]
            if not isinstance(out, fx.Node):
                blocking.append("output: the model returns a tuple or dict, not one logits tensor")
            elif out in index:
                output = index[out]
            elif not info[out].var:
                blocking.append("output: does not depend on the input")
            continue  # else: the output depends on a blocked node, which is named already
        if v is None or not v.var:
            continue
        if not isinstance(v.value, torch.Tensor):
            if n.op == "call_method" and n.target in _META_METHODS or n.op == "call_function" and n.target is getattr:
                continue  # shapes; only reshapes may use them, and those read their shape from the probe
            blocking.append(f"{_label(n, gm)}: returns {type(v.value).__name__}, not a tensor")
            continue
        if v.value.ndim == 0 or v.value.shape[0] != _PROBE_BATCH:
            blocking.append(f"{_label(n, gm)}: mixes the samples of a batch")
            continue
        try:
            op, inputs = _convert(n, gm, info, index)
        except (_Skip, ValueError) as exc:
            blocking.append(f"{_label(n, gm)}: {exc}" if str(exc) else _label(n, gm))
            continue
        missing = [a for a in inputs if a not in index]
        if missing:
            continue  # depends on a blocked node: already named
        index[n] = len(nodes)
        nodes.append(Node(n.name, _label(n, gm), op, tuple(index[a] for a in inputs), tuple(v.value.shape[1:])))
    if blocking:
        raise UnsupportedModel(_dedupe(blocking))
    if output is None:
        raise UntraceableModel("its graph has no output that depends on the input")
    return BoundGraph(nodes, output)


def _dedupe(items: list[str]) -> list[str]:
    seen: list[str] = []
    for it in items:
        if it not in seen:
            seen.append(it)
    return seen


def _label(n: fx.Node, gm: fx.GraphModule) -> str:
    if n.op == "call_module":
        return f"{n.target} ({type(gm.get_submodule(n.target)).__name__})"
    if n.op == "call_method":
        return f"{n.name} (.{n.target}())"
    name = getattr(n.target, "__name__", str(n.target))
    return f"{n.name} ({name})"


def _per_sample_const(c: Any, shape: tuple[int, ...]) -> Any:
    """A constant operand as a tensor that broadcasts over one sample (a leading batch axis of 1 dropped)."""
    if not isinstance(c, torch.Tensor):
        if isinstance(c, (int, float)) and not isinstance(c, bool):
            return float(c)
        raise _Skip(f"a {type(c).__name__} operand")
    t = c
    while t.ndim > len(shape):
        if t.shape[0] != 1:
            raise _Skip("a constant with a batch dimension")
        t = t[0]
    return t


def _convert(n: fx.Node, gm: fx.GraphModule, info, index) -> tuple[ops.BoundOp, list[fx.Node]]:
    """(operator, its variable input nodes) for one image-dependent fx node."""
    tensor_args = [a for a in n.all_input_nodes if info[a].var and isinstance(info[a].value, torch.Tensor)]
    shape = tuple(info[n].value.shape[1:])

    def in_shape(a: fx.Node) -> tuple[int, ...]:
        return tuple(info[a].value.shape[1:])

    def const(a) -> Callable[[], Any]:
        """A live getter for a constant operand (an fx node or a literal), as one sample's tensor."""
        if isinstance(a, fx.Node):
            getter = info[a].const
            return lambda: _per_sample_const(getter(), shape)
        value = _per_sample_const(a, shape)
        return lambda: value

    def only_var(a) -> fx.Node:
        if not (isinstance(a, fx.Node) and info[a].var):
            raise _Skip("its first operand does not depend on the input")
        return a

    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        x = only_var(n.args[0]) if n.args else None
        if len(tensor_args) != 1 or x is None:
            raise _Skip("a module with several inputs")
        if isinstance(m, nn.Linear):
            return ops.Linear.of(m), [x]
        if isinstance(m, nn.Conv2d):
            return ops.Conv2d.of(m, in_shape(x)), [x]
        if type(m) is nn.ReLU:
            return ops.ReLU(), [x]
        if type(m) is nn.LeakyReLU:
            return ops.LeakyReLU(m.negative_slope), [x]
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.training or not m.track_running_stats or m.running_mean is None:
                raise _Skip("BatchNorm that uses batch statistics (training mode or track_running_stats=False)")
            return ops.ElementwiseAffine.batch_norm(m, 1 + len(shape)), [x]
        if type(m) is nn.MaxPool2d:
            return _maxpool(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices,
                            in_shape(x), shape), [x]
        if type(m) in (nn.AvgPool2d, nn.AdaptiveAvgPool2d):
            return ops.MonotoneLinear(m, in_shape(x)), [x]
        if type(m) in (nn.Flatten, nn.Unflatten):
            return ops.Reshape(in_shape(x), shape), [x]
        if isinstance(m, _IDENTITY_MODULES):
            if m.training and not isinstance(m, nn.Identity):
                raise _Skip("dropout in training mode")
            return ops.Reshape(in_shape(x), shape), [x]
        raise _Skip("")

    if n.op == "call_method":
        name = n.target
        x = only_var(n.args[0])
        rest = n.args[1:]
        if name in _RESHAPE_METHODS:
            return ops.Reshape(in_shape(x), shape), [x]
        if name in ("relu", "relu_"):
            return ops.ReLU(), [x]
        if name in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "__add__", "__sub__", "__mul__", "__truediv__"):
            fn = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
                  "__add__": operator.add, "__sub__": operator.sub, "__mul__": operator.mul,
                  "__truediv__": operator.truediv}[name.rstrip("_") if not name.startswith("__") else name]
            if n.kwargs:
                raise _Skip(f".{name}() with keyword arguments")
            return _arith(fn, [x, *rest], info, const, shape)
        if name == "neg":
            return ops.ElementwiseAffine(lambda: -1.0, lambda: 0.0), [x]
        if name in ("mean", "sum", "permute", "transpose"):
            args, kwargs = _literal(rest, info), _literal(dict(n.kwargs), info)
            _batch_axis_kept(name, args, kwargs)
            return ops.MonotoneLinear(lambda t, name=name: getattr(t, name)(*args, **kwargs), in_shape(x)), [x]
        raise _Skip(f"method .{name}() is not supported")

    if n.op == "call_function":
        t = n.target
        if t in _RELU:
            return ops.ReLU(), [only_var(n.args[0])]
        if t in (F.leaky_relu, F.leaky_relu_):
            kw = _bind(F.leaky_relu, n.args, n.kwargs)
            return ops.LeakyReLU(float(kw["negative_slope"])), [only_var(kw["input"])]
        if t is torch.flatten:
            x = only_var(n.args[0])
            return ops.Reshape(in_shape(x), shape), [x]
        if t is torch.reshape:
            x = only_var(n.args[0])
            return ops.Reshape(in_shape(x), shape), [x]
        for group, fn in ((_ADD, operator.add), (_SUB, operator.sub), (_MUL, operator.mul), (_DIV, operator.truediv)):
            if t in group:
                if n.kwargs:
                    raise _Skip("keyword arguments (alpha=, out=)")
                return _arith(fn, list(n.args), info, const, shape)
        if t in _NEG:
            return ops.ElementwiseAffine(lambda: -1.0, lambda: 0.0), [only_var(n.args[0])]
        if t is F.linear:
            kw = _bind(t, n.args, n.kwargs)
            x = only_var(kw["input"])
            _all_const(kw, ("weight", "bias"), info)
            bias = const_raw(kw["bias"], info)
            return ops.Linear(const_raw(kw["weight"], info), bias), [x]
        if t is F.conv2d:
            kw = _bind(t, n.args, n.kwargs)
            x = only_var(kw["input"])
            _all_const(kw, ("weight", "bias"), info)
            return ops.Conv2d(const_raw(kw["weight"], info), const_raw(kw["bias"], info), kw["stride"], kw["padding"],
                              kw["dilation"], kw["groups"], in_shape(x)), [x]
        if t is F.max_pool2d:
            kw = _bind(t, n.args, n.kwargs)
            x = only_var(kw["input"])
            return _maxpool(kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"], kw["ceil_mode"],
                            kw["return_indices"], in_shape(x), shape), [x]
        if t in (F.avg_pool2d, F.adaptive_avg_pool2d, torch.mean, torch.sum):
            x = only_var(n.args[0])
            if t in (torch.mean, torch.sum):
                _batch_axis_kept(t.__name__, n.args[1:], n.kwargs)
            args, kwargs = _literal(n.args[1:], info), _literal(dict(n.kwargs), info)
            return ops.MonotoneLinear(lambda z, t=t: t(z, *args, **kwargs), in_shape(x)), [x]
        if t is F.dropout:
            kw = _bind(t, n.args, n.kwargs)
            if kw["training"]:
                raise _Skip("dropout in training mode")
            x = only_var(kw["input"])
            return ops.Reshape(in_shape(x), shape), [x]
        if t is F.batch_norm:
            kw = _bind(t, n.args, n.kwargs)
            if kw["training"]:
                raise _Skip("batch_norm with training=True")
            x = only_var(kw["input"])
            _all_const(kw, ("running_mean", "running_var", "weight", "bias"), info)
            return _functional_bn(kw, info, 1 + len(shape)), [x]
        name = getattr(t, "__name__", str(t))
        raise _Skip(f"function {name} is not supported")
    raise _Skip(f"fx op {n.op}")


def const_raw(a, info) -> Callable[[], Any]:
    """A live getter for a constant operand kept as it is (weights, biases)."""
    if isinstance(a, fx.Node):
        return info[a].const
    return lambda: a


def _literal(args, info):
    """Operands that are not images (kernel sizes, axes) with fx nodes replaced by their values."""
    def value(a: fx.Node):
        if info[a].var:
            raise _Skip("an argument computed from the input")
        return info[a].value

    return fx.node.map_arg(args, value)


def _all_const(kw: dict, names, info) -> None:
    for k in names:
        a = kw.get(k)
        if isinstance(a, fx.Node) and info[a].var:
            raise _Skip(f"its {k} depends on the input")


def _batch_axis_kept(name: str, args, kwargs) -> None:
    dims = kwargs.get("dim", args[0] if args else None)
    if name == "permute":
        order = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        if not order or order[0] != 0:
            raise _Skip("permute moves the batch axis")
        return
    if name == "transpose":
        if 0 in args[:2] or -len(args) in args[:2]:
            raise _Skip("transpose moves the batch axis")
        return
    if dims is None:
        raise _Skip(f"{name} over every axis mixes the samples")
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    if any(int(d) == 0 for d in dims):
        raise _Skip(f"{name} over the batch axis")


def _arith(fn, args: list, info, const, shape) -> tuple[ops.BoundOp, list[fx.Node]]:
    """``a ∘ b`` for ∘ in + − × ÷ with at least one operand depending on the input."""
    if len(args) != 2:
        raise _Skip("arithmetic with other than two operands")
    a, b = args
    var_a = isinstance(a, fx.Node) and info[a].var
    var_b = isinstance(b, fx.Node) and info[b].var
    for operand, is_var in ((a, var_a), (b, var_b)):
        if is_var and not isinstance(info[operand].value, torch.Tensor):
            raise _Skip("arithmetic on a shape")
    if var_a and var_b:
        if fn is operator.add:
            return ops.Add(), [a, b]
        if fn is operator.sub:
            return ops.Sub(), [a, b]
        raise _Skip("the product or quotient of two input-dependent tensors")
    x, c = (a, const(b)) if var_a else (b, const(a))
    one, zero = (lambda: 1.0), (lambda: 0.0)
    if fn is operator.add:
        return ops.ElementwiseAffine(one, c), [x]
    if fn is operator.mul:
        return ops.ElementwiseAffine(c, zero), [x]
    if fn is operator.sub:
        if var_a:
            return ops.ElementwiseAffine(one, lambda: -c()), [x]
        return ops.ElementwiseAffine(lambda: -1.0, c), [x]
    if var_a:  # x / c
        return ops.ElementwiseAffine(lambda: 1.0 / c(), zero), [x]
    raise _Skip("division by an input-dependent tensor")


def _maxpool(kernel, stride, padding, dilation, ceil_mode, return_indices, in_shape, out_shape) -> ops.MaxPool2d:
    if return_indices:
        raise _Skip("max pooling that returns indices")
    op = ops.MaxPool2d(kernel, stride, padding, dilation, in_shape, out_shape)
    if ceil_mode:  # fine when ceil mode adds no window
        probe = torch.zeros(1, *in_shape)
        if tuple(op.forward(probe).shape[1:]) != tuple(out_shape):
            raise _Skip("max pooling with ceil_mode=True that adds partial windows")
    if len(in_shape) != 3:
        raise _Skip("max pooling of a non-image tensor")
    return op


def _functional_bn(kw: dict, info, ndim: int) -> ops.ElementwiseAffine:
    get = {k: const_raw(kw[k], info) for k in ("running_mean", "running_var", "weight", "bias")}
    eps = float(kw["eps"])
    shape = (-1,) + (1,) * (ndim - 2)

    def scale():
        s = (get["running_var"]() + eps).rsqrt()
        w = get["weight"]()
        return (s * w if w is not None else s).reshape(shape)

    def shift():
        s = scale().reshape(-1)
        b = get["bias"]()
        t = -get["running_mean"]() * s
        return (t + b if b is not None else t).reshape(shape)

    return ops.ElementwiseAffine(scale, shift)
