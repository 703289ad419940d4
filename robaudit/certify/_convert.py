"""How each traced fx node becomes a bound operator (:mod:`robaudit.certify.ops`), or why it can't.

:func:`convert` maps one image-dependent node of a ``torch.fx`` graph — a module call, a function
or a method — to an operator and its variable inputs; constants (weights, the normalization's mean
and std) are read through live getters, so bounds stay differentiable in the module's parameters.
A node outside the supported set raises :class:`Skip` with the reason, which
:func:`robaudit.certify.graph.trace` collects into one message naming every blocking layer.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import ops

__all__ = ["Skip", "Value", "convert", "label", "META_METHODS"]

_RELU = {F.relu, torch.relu, torch.relu_, F.relu_}
_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}
_NEG = {operator.neg, torch.neg}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous"}
META_METHODS = {"size", "dim"}
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


class Skip(Exception):
    """This node blocks certification (the message says why)."""


def _bind(target, args, kwargs) -> dict[str, Any]:
    names = _SIGNATURES[target]
    out = dict(_DEFAULTS.get(target, {}))
    out.update(zip(names, args))
    out.update(kwargs)
    return out


@dataclass
class Value:
    """What the probe run learned about an fx node."""

    value: Any
    var: bool  # depends on the image
    const: Callable[[], Any] | None = None  # a live getter for image-independent values

    def value_now(self) -> Any:
        """An image-independent value recomputed from the module's current parameters."""
        if self.const is None:
            raise Skip("an operand computed from the input where a constant is needed")
        return self.const()


def label(n: fx.Node, gm: fx.GraphModule) -> str:
    if n.op == "call_module":
        return f"{n.target} ({type(gm.get_submodule(str(n.target))).__name__})"
    if n.op == "call_method":
        return f"{n.name} (.{n.target}())"
    name = getattr(n.target, "__name__", str(n.target))
    return f"{n.name} ({name})"


def _per_sample_const(c: Any, shape: tuple[int, ...]) -> Any:
    """A constant operand as a tensor that broadcasts over one sample (a leading batch axis of 1 dropped)."""
    if not isinstance(c, torch.Tensor):
        if isinstance(c, (int, float)) and not isinstance(c, bool):
            return float(c)
        raise Skip(f"a {type(c).__name__} operand")
    t = c
    while t.ndim > len(shape):
        if t.shape[0] != 1:
            raise Skip("a constant with a batch dimension")
        t = t[0]
    return t


def convert(n: fx.Node, gm: fx.GraphModule, info, index) -> tuple[ops.BoundOp, list[fx.Node]]:
    """(operator, its variable input nodes) for one image-dependent fx node."""
    tensor_args = [a for a in n.all_input_nodes if info[a].var and isinstance(info[a].value, torch.Tensor)]
    shape = tuple(info[n].value.shape[1:])

    def in_shape(a: fx.Node) -> tuple[int, ...]:
        return tuple(info[a].value.shape[1:])

    def const(a) -> Callable[[], Any]:
        """A live getter for a constant operand (an fx node or a literal), as one sample's tensor."""
        if isinstance(a, fx.Node):
            node_value = info[a]
            return lambda: _per_sample_const(node_value.value_now(), shape)
        value = _per_sample_const(a, shape)
        return lambda: value

    def only_var(a) -> fx.Node:
        if not (isinstance(a, fx.Node) and info[a].var):
            raise Skip("its first operand does not depend on the input")
        return a

    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        x = only_var(n.args[0]) if n.args else None
        if len(tensor_args) != 1 or x is None:
            raise Skip("a module with several inputs")
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
                raise Skip("BatchNorm that uses batch statistics (training mode or track_running_stats=False)")
            return ops.ElementwiseAffine.batch_norm(m, 1 + len(shape)), [x]
        if type(m) is nn.MaxPool2d:
            return _maxpool(
                m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices, in_shape(x), shape
            ), [x]
        if type(m) in (nn.AvgPool2d, nn.AdaptiveAvgPool2d):
            return ops.MonotoneLinear(m, in_shape(x)), [x]
        if type(m) in (nn.Flatten, nn.Unflatten):
            return ops.Reshape(in_shape(x), shape), [x]
        if isinstance(m, _IDENTITY_MODULES):
            if m.training and not isinstance(m, nn.Identity):
                raise Skip("dropout in training mode")
            return ops.Reshape(in_shape(x), shape), [x]
        raise Skip("")

    if n.op == "call_method":
        name = n.target
        x = only_var(n.args[0])
        rest = n.args[1:]
        if name in _RESHAPE_METHODS:
            return ops.Reshape(in_shape(x), shape), [x]
        if name in ("relu", "relu_"):
            return ops.ReLU(), [x]
        if name in (
            "add",
            "add_",
            "sub",
            "sub_",
            "mul",
            "mul_",
            "div",
            "div_",
            "__add__",
            "__sub__",
            "__mul__",
            "__truediv__",
        ):
            fn = {
                "add": operator.add,
                "sub": operator.sub,
                "mul": operator.mul,
                "div": operator.truediv,
                "__add__": operator.add,
                "__sub__": operator.sub,
                "__mul__": operator.mul,
                "__truediv__": operator.truediv,
            }[name.rstrip("_") if not name.startswith("__") else name]
            if n.kwargs:
                raise Skip(f".{name}() with keyword arguments")
            return _arith(fn, [x, *rest], info, const, shape)
        if name == "neg":
            return ops.ElementwiseAffine(lambda: -1.0, lambda: 0.0), [x]
        if name in ("mean", "sum", "permute", "transpose"):
            args, kwargs = _literal(rest, info), _literal(dict(n.kwargs), info)
            _batch_axis_kept(name, args, kwargs)

            def method(t: torch.Tensor, name: str = name) -> torch.Tensor:
                return getattr(t, name)(*args, **kwargs)

            return ops.MonotoneLinear(method, in_shape(x)), [x]
        raise Skip(f"method .{name}() is not supported")

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
                    raise Skip("keyword arguments (alpha=, out=)")
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
            return ops.Conv2d(
                const_raw(kw["weight"], info),
                const_raw(kw["bias"], info),
                kw["stride"],
                kw["padding"],
                kw["dilation"],
                kw["groups"],
                in_shape(x),
            ), [x]
        if t is F.max_pool2d:
            kw = _bind(t, n.args, n.kwargs)
            x = only_var(kw["input"])
            return _maxpool(
                kw["kernel_size"],
                kw["stride"],
                kw["padding"],
                kw["dilation"],
                kw["ceil_mode"],
                kw["return_indices"],
                in_shape(x),
                shape,
            ), [x]
        if t in (F.avg_pool2d, F.adaptive_avg_pool2d, torch.mean, torch.sum):
            x = only_var(n.args[0])
            if t in (torch.mean, torch.sum):
                _batch_axis_kept(t.__name__, n.args[1:], n.kwargs)
            args, kwargs = _literal(n.args[1:], info), _literal(dict(n.kwargs), info)

            def pool(z: torch.Tensor, fn: Callable[..., torch.Tensor] = t) -> torch.Tensor:
                return fn(z, *args, **kwargs)

            return ops.MonotoneLinear(pool, in_shape(x)), [x]
        if t is F.dropout:
            kw = _bind(t, n.args, n.kwargs)
            if kw["training"]:
                raise Skip("dropout in training mode")
            x = only_var(kw["input"])
            return ops.Reshape(in_shape(x), shape), [x]
        if t is F.batch_norm:
            kw = _bind(t, n.args, n.kwargs)
            if kw["training"]:
                raise Skip("batch_norm with training=True")
            x = only_var(kw["input"])
            _all_const(kw, ("running_mean", "running_var", "weight", "bias"), info)
            return _functional_bn(kw, info, 1 + len(shape)), [x]
        name = getattr(t, "__name__", str(t))
        raise Skip(f"function {name} is not supported")
    raise Skip(f"fx op {n.op}")


def const_raw(a, info) -> Callable[[], Any]:
    """A live getter for a constant operand kept as it is (weights, biases)."""
    if isinstance(a, fx.Node):
        return info[a].value_now
    return lambda: a


def _literal(args, info):
    """Operands that are not images (kernel sizes, axes) with fx nodes replaced by their values."""

    def value(a: fx.Node):
        if info[a].var:
            raise Skip("an argument computed from the input")
        return info[a].value

    return fx.node.map_arg(args, value)


def _all_const(kw: dict, names, info) -> None:
    for k in names:
        a = kw.get(k)
        if isinstance(a, fx.Node) and info[a].var:
            raise Skip(f"its {k} depends on the input")


def _batch_axis_kept(name: str, args, kwargs) -> None:
    dims = kwargs.get("dim", args[0] if args else None)
    if name == "permute":
        order = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        if not order or order[0] != 0:
            raise Skip("permute moves the batch axis")
        return
    if name == "transpose":
        if 0 in args[:2] or -len(args) in args[:2]:
            raise Skip("transpose moves the batch axis")
        return
    if dims is None:
        raise Skip(f"{name} over every axis mixes the samples")
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    if any(int(d) == 0 for d in dims):
        raise Skip(f"{name} over the batch axis")


def _arith(fn, args: list, info, const, shape) -> tuple[ops.BoundOp, list[fx.Node]]:
    """``a ∘ b`` for ∘ in + − × ÷ with at least one operand depending on the input."""
    if len(args) != 2:
        raise Skip("arithmetic with other than two operands")
    a, b = args
    var_a = isinstance(a, fx.Node) and info[a].var
    var_b = isinstance(b, fx.Node) and info[b].var
    for operand, is_var in ((a, var_a), (b, var_b)):
        if is_var and not isinstance(info[operand].value, torch.Tensor):
            raise Skip("arithmetic on a shape")
    if var_a and var_b:
        if fn is operator.add:
            return ops.Add(), [a, b]
        if fn is operator.sub:
            return ops.Sub(), [a, b]
        raise Skip("the product or quotient of two input-dependent tensors")
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
    raise Skip("division by an input-dependent tensor")


def _maxpool(kernel, stride, padding, dilation, ceil_mode, return_indices, in_shape, out_shape) -> ops.MaxPool2d:
    if return_indices:
        raise Skip("max pooling that returns indices")
    op = ops.MaxPool2d(kernel, stride, padding, dilation, in_shape, out_shape)
    if ceil_mode:  # fine when ceil mode adds no window
        probe = torch.zeros(1, *in_shape)
        if tuple(op.forward(probe).shape[1:]) != tuple(out_shape):
            raise Skip("max pooling with ceil_mode=True that adds partial windows")
    if len(in_shape) != 3:
        raise Skip("max pooling of a non-image tensor")
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
