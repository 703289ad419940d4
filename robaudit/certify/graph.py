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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from . import ops
from ._convert import META_METHODS, Skip, Value, convert, label

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
    the list); ``shape``: per sample; ``op``: :class:`~robaudit.certify.ops.Input` for the image."""

    name: str
    label: str
    op: ops.BoundOp
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
        values: list[torch.Tensor] = [x]
        for node in self.nodes[1:]:
            values.append(node.op.forward(*(values[j] for j in node.inputs)))
        return values[self.output]

    def nonlinear(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.op.nonlinear]

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


_PROBE_BATCH = 2


class _Probe(fx.Interpreter):
    """Runs the traced module once, recording every node's value and whether it depends on the image."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.info: dict[fx.Node, Value] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        deps = [a for a in n.all_input_nodes]
        var = n.op == "placeholder" or any(self.info[a].var for a in deps)
        self.info[n] = Value(value, var, None if var else self._getter(n, value))
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
                args = fx.node.map_arg(n.args, lambda a: info[a].value_now())
                kwargs = fx.node.map_arg(n.kwargs, lambda a: info[a].value_now())
                if n.op == "call_function":
                    return n.target(*args, **kwargs)
                if n.op == "call_method":
                    self_, *rest = args
                    return getattr(self_, n.target)(*rest, **kwargs)
                return root.get_submodule(str(n.target))(*args, **kwargs)

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
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UntraceableModel(f"torch.fx cannot trace it ({type(exc).__name__}: {line[:200]})") from None
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
        raise UntraceableModel(
            f"its traced graph disagrees with the model by {diff:.3g} on a probe batch "
            "(is a layer in training mode or stateful?)"
        )
    return graph


def _build(gm: fx.GraphModule, info: dict[fx.Node, Value], input_shape) -> BoundGraph:
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
            nodes.append(Node("input", "input", ops.Input(), (), tuple(input_shape)))
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
            if n.op == "call_method" and n.target in META_METHODS or n.op == "call_function" and n.target is getattr:
                continue  # shapes; only reshapes may use them, and those read their shape from the probe
            blocking.append(f"{label(n, gm)}: returns {type(v.value).__name__}, not a tensor")
            continue
        if v.value.ndim == 0 or v.value.shape[0] != _PROBE_BATCH:
            blocking.append(f"{label(n, gm)}: mixes the samples of a batch")
            continue
        try:
            op, inputs = convert(n, gm, info, index)
        except (Skip, ValueError) as exc:
            blocking.append(f"{label(n, gm)}: {exc}" if str(exc) else label(n, gm))
            continue
        missing = [a for a in inputs if a not in index]
        if missing:
            continue  # depends on a blocked node: already named
        index[n] = len(nodes)
        nodes.append(Node(n.name, label(n, gm), op, tuple(index[a] for a in inputs), tuple(v.value.shape[1:])))
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
