"""Bounds on a traced classifier over a threat set: IBP, CROWN and α-CROWN.

The threat set of an image x is ``{x' : ‖x' − x‖ ≤ ε, 0 ≤ x' ≤ 1}`` in pixel space (the ε-ball
intersected with the [0,1] box; the normalization is inside the graph). A *specification* is a
matrix C ``[B, K, num_classes]``; the methods return a lower bound of ``C·z(x')`` over the set for
each of the K rows. With :func:`margin_spec` the rows are ``z_y − z_j`` (j ≠ y): a sample is
certified when every row's lower bound is > 0.

* **IBP** (Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation"): boxes forward
  through every layer; the specification is applied to the last affine layers exactly ("elision
  of the last layer", §3) and concretized on the box of the last nonlinear layer.
* **CROWN** (Zhang et al. 2018, "Efficient Neural Network Robustness Certification with General
  Activation Functions"): linear bounds propagated backward from the specification to the input,
  through a linear relaxation of every ReLU on its pre-activation box, concretized exactly on the
  threat set. Pre-activation boxes come from CROWN itself (``intermediate="crown"``; only neurons
  unstable under IBP are tightened) or from IBP (``intermediate="ibp"``: CROWN-IBP, Zhang et al.
  2020, the cheap variant used for training).
* **α-CROWN** (Xu et al. 2021, "Fast and Complete"): CROWN whose lower ReLU slopes are optimized by
  gradient ascent on the bound, per specification row (intermediate boxes are CROWN's).

Every lower bound returned is sound for any slopes; the final bound of ``crown``/``alpha-crown``
is the elementwise maximum with IBP's (CROWN is usually, not always, tighter).
Everything is batched over samples and rows, differentiable in the weights, and runs on the
tensors' device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .graph import BoundGraph
from .ops import Input, LeakyReLU, MaxPool2d
from .patches import Patch, concretize_patch, patch_backward, unit_patch
from .threat_set import Bounds, ThreatSet, margin_spec, other_classes

__all__ = [
    "ThreatSet",
    "margin_spec",
    "other_classes",
    "ibp_bounds",
    "intermediate_bounds",
    "spec_bounds",
    "ibp_spec_lower",
    "crown_spec_lower",
    "METHODS",
    "DEFAULT_MAX_ELEMENTS",
]

METHODS = ("ibp", "crown", "alpha-crown")
# elements of one [B, K, *shape] coefficient tensor per step: 4 MiB of float32 on a CPU (chunks that
# stay in cache: 2.7× faster than 128 MiB chunks on the demo CNN), 128 MiB on a GPU
DEFAULT_MAX_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 25}


USE_PATCHES = True  # local windows for convolutional intermediate bounds (tests compare with the dense path)


def _budget(max_elements: int | None, like: torch.Tensor) -> int:
    if max_elements is not None:
        return int(max_elements)
    return DEFAULT_MAX_ELEMENTS.get(like.device.type, DEFAULT_MAX_ELEMENTS["cuda"])


# --- IBP -----------------------------------------------------------------------------------------


def ibp_bounds(graph: BoundGraph, threat: ThreatSet, known: dict[int, Bounds] | None = None) -> list[Bounds]:
    """Boxes of every node (IBP), starting from the threat set's box; ``known`` boxes (tighter,
    e.g. from CROWN) are intersected in where given."""
    bounds: list[Bounds] = [threat.box()]
    for i, node in enumerate(graph.nodes[1:], 1):
        lo, hi = node.op.ibp(*(bounds[j] for j in node.inputs))
        if known and i in known:
            klo, khi = known[i]
            lo, hi = torch.maximum(lo, klo), torch.minimum(hi, khi)
        bounds.append((lo, hi))
    return bounds


# --- CROWN backward --------------------------------------------------------------------------------


class _Relaxations(dict):
    """Node → its relaxation (:meth:`BoundOp.relax` on the node boxes), computed on first use.
    Boxes of a node never change once a later node is being bounded, so each is computed once."""

    def __init__(self, graph: BoundGraph, bounds: Sequence[Bounds]):
        super().__init__()
        self.graph, self.bounds = graph, bounds

    def of(self, i: int, rows: torch.Tensor | None) -> tuple:
        if i not in self:
            node = self.graph.nodes[i]
            self[i] = node.op.relax([self.bounds[j] for j in node.inputs])
        r = self[i]
        return r if rows is None else tuple(t[rows] for t in r)


def _backward(
    graph: BoundGraph,
    start: int,
    A: torch.Tensor,
    bounds: Sequence[Bounds],
    threat: ThreatSet,
    alphas: dict[int, torch.Tensor] | None = None,
    elide: bool = False,
    relax: _Relaxations | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lower bound [R, K] of Σ A·node_start over the threat set. ``rows`` [R]: the sample of each
    row of A (default: row b is sample b); ``relax``: cached relaxations of ``bounds``. ``elide``:
    stop at every nonlinear node and concretize on its IBP box (IBP with the last affine layers
    applied exactly)."""
    return _propagate(
        graph, {start: A}, torch.zeros(A.shape[:2], dtype=A.dtype, device=A.device), bounds, threat, alphas, elide, relax, rows
    )


def _propagate(
    graph,
    pending: dict[int, torch.Tensor | Patch],
    const: torch.Tensor,
    bounds,
    threat,
    alphas=None,
    elide=False,
    relax=None,
    rows=None,
) -> torch.Tensor:
    """:func:`_backward` from coefficients ``pending`` (node → [R, K, *shape]) and a constant [R, K]."""
    relax = relax if relax is not None else _Relaxations(graph, bounds)
    start = max(pending)
    for i in range(start, 0, -1):
        a = pending.pop(i, None)
        if a is None:
            continue
        node = graph.nodes[i]
        if isinstance(a, Patch):
            step = (
                patch_backward(
                    node.op, a, relax.of(i, None) if node.op.nonlinear else None, rows, graph.nodes[node.inputs[0]].shape
                )
                if len(node.inputs) == 1
                else None
            )
            if step is not None:
                coef, c = step
                const = const + c
                _accumulate(pending, node.inputs[0], coef)
                continue
            a = a.dense()
        if elide and node.op.nonlinear:
            lo, hi = bounds[i]
            if rows is not None:
                lo, hi = lo[rows], hi[rows]
            const = const + (a.clamp(min=0) * lo[:, None] + a.clamp(max=0) * hi[:, None]).flatten(2).sum(-1)
            continue
        r = relax.of(i, rows) if node.op.nonlinear else None
        coefs, c = node.op.backward(a, r, None if alphas is None else alphas.get(i))
        const = const + c
        for j, cj in zip(node.inputs, coefs):
            _accumulate(pending, j, cj)
    a0 = pending.pop(0, None)
    if a0 is None:
        return const
    if isinstance(a0, Patch):
        if threat.norm == "linf":
            return const + concretize_patch(a0, threat.lo, threat.hi, rows)
        a0 = a0.dense()
    return const + (threat if rows is None else threat.take(rows)).concretize(a0)


def _accumulate(pending: dict, j: int, value) -> None:
    """Add coefficients (a tensor or a Patch) to node j's; two different kinds meet as dense tensors."""
    if j not in pending:
        pending[j] = value
        return
    old = pending[j]
    pending[j] = (old.dense() if isinstance(old, Patch) else old) + (value.dense() if isinstance(value, Patch) else value)


def _rows_per_chunk(graph: BoundGraph, batch: int, max_elements: int) -> int:
    widest = max(int(torch.Size(n.shape).numel()) for n in graph.nodes)
    return max(1, max_elements // max(1, batch * widest))


def _spec_lower(graph, start, C, bounds, threat, max_elements, relax=None) -> torch.Tensor:
    """:func:`_backward` over chunks of rows of C [B, K, *shape_start] (memory: ``max_elements``)."""
    K = C.shape[1]
    step = _rows_per_chunk(graph, C.shape[0], max_elements)
    relax = relax if relax is not None else _Relaxations(graph, bounds)
    if step >= K:
        return _backward(graph, start, C, bounds, threat, relax=relax)
    return torch.cat(
        [_backward(graph, start, C[:, k : k + step], bounds, threat, relax=relax) for k in range(0, K, step)], dim=1
    )


def _needs_tightening(graph: BoundGraph) -> set[int]:
    """Nodes whose boxes a relaxation uses and that IBP may overestimate: inputs of ReLU/MaxPool
    nodes that are not themselves outputs of a monotone elementwise node (whose IBP box is exact
    given its input's)."""
    out: set[int] = set()
    for i in graph.nonlinear():
        for j in graph.nodes[i].inputs:
            op = graph.nodes[j].op
            if not isinstance(op, Input) and not op.monotone:
                out.add(j)
    return out


def _exact_under_ibp(graph: BoundGraph, norm: str) -> set[int]:
    """Nodes whose IBP box is already exact on an ℓ∞ threat set: reached from the input by
    elementwise affine maps, reshapes and at most one other affine map (one matrix: |W|·r is then
    the exact radius)."""
    from .ops import ElementwiseAffine, Reshape

    if norm != "linf":
        return set()
    matrices: dict[int, int] = {0: 0}
    for i, node in enumerate(graph.nodes[1:], 1):
        if len(node.inputs) != 1 or node.inputs[0] not in matrices or node.op.nonlinear:
            continue
        before = matrices[node.inputs[0]]
        here = before + (0 if isinstance(node.op, (ElementwiseAffine, Reshape)) else 1)
        if here <= 1:
            matrices[i] = here
    return set(matrices)


def tightened_nodes(graph: BoundGraph, norm: str) -> set[int]:
    """The nodes whose boxes CROWN tightens (``intermediate="crown"``) on a threat set of ``norm``."""
    return _needs_tightening(graph) - _exact_under_ibp(graph, norm)


def intermediate_bounds(
    graph: BoundGraph,
    threat: ThreatSet,
    method: str = "crown",
    max_elements: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> list[Bounds]:
    """Boxes of every node: IBP (``method="ibp"``), or IBP tightened by CROWN on the neurons whose
    relaxation matters (``"crown"``): for each ReLU input, its neurons unstable under the current
    boxes (l < 0 < u); for each MaxPool input, every neuron."""
    if method == "ibp":
        return ibp_bounds(graph, threat)
    max_elements = _budget(max_elements, threat.x)
    targets = tightened_nodes(graph, threat.norm)
    bounds: list[Bounds] = [threat.box()]
    relax = _Relaxations(graph, bounds)
    order = sorted(targets)
    for i, node in enumerate(graph.nodes[1:], 1):
        lo, hi = node.op.ibp(*(bounds[j] for j in node.inputs))
        if i in targets:
            relu_input = any(isinstance(graph.nodes[c].op, LeakyReLU) for c in graph.consumers[i])
            pool_input = any(isinstance(graph.nodes[c].op, MaxPool2d) for c in graph.consumers[i])
            select = (lo < 0) & (hi > 0) if relu_input and not pool_input else torch.ones_like(lo, dtype=torch.bool)
            lo, hi = _tighten(graph, i, lo, hi, select, bounds, threat, max_elements, relax)
            if progress is not None:
                progress((order.index(i) + 1) / (len(order) + 1))
        bounds.append((lo, hi))
    return bounds


def _tighten(graph, i, lo, hi, select, bounds, threat, max_elements, relax) -> Bounds:
    """CROWN bounds of node ``i`` on the ``select``ed neurons, intersected with its IBP box.

    The (sample, neuron) pairs of the whole batch are packed into chunks of rows — each row is one
    neuron of one sample, bounded from below and above (K = 2) with that sample's boxes — so a
    batch whose samples have very different numbers of unstable neurons wastes no work on padding."""
    B = lo.shape[0]
    flat = select.reshape(B, -1)
    pairs = flat.nonzero()  # [R, 2]: (sample, neuron), sample-major
    if not pairs.numel():
        return lo, hi
    step = max(1, _rows_per_chunk(graph, 2, max_elements))
    lows, highs = [], []
    for start in range(0, pairs.shape[0], step):
        sample, neuron = pairs[start : start + step].unbind(1)
        pending, const = _unit_rows(graph, i, neuron, lo.dtype)
        low = _propagate(graph, pending, const, bounds, threat, relax=relax, rows=sample)
        lows.append(low[:, 0])
        highs.append(-low[:, 1])
    new_lo, new_hi = torch.cat(lows), torch.cat(highs)
    flat_lo, flat_hi = lo.reshape(B, -1), hi.reshape(B, -1)
    b, j = pairs.unbind(1)
    flat_lo = flat_lo.index_put((b, j), torch.maximum(flat_lo[b, j], new_lo))
    flat_hi = flat_hi.index_put((b, j), torch.minimum(flat_hi[b, j], new_hi))
    return flat_lo.reshape(lo.shape), flat_hi.reshape(hi.shape)


def _unit_rows(graph: BoundGraph, i: int, neuron: torch.Tensor, dtype) -> tuple[dict[int, torch.Tensor | Patch], torch.Tensor]:
    """The specifications +e_n and −e_n of node ``i`` (one neuron n per row, [R]) as coefficients
    [R, 2, *shape] on the nodes below it and a constant [R, 2]. One-hot rows are pushed through
    elementwise-affine and reshape nodes exactly, then through the first Conv2d / Linear by
    placing its weights directly (a :class:`~robaudit.certify.patches.Patch` for a convolution: the
    window of its receptive field, kept local through the layers below while they allow it)."""
    from .ops import Conv2d, ElementwiseAffine, Linear, Reshape

    R = neuron.shape[0]
    dev = neuron.device
    scale = torch.ones(R, dtype=dtype, device=dev)
    const = torch.zeros(R, dtype=dtype, device=dev)
    cur = i
    while True:
        node = graph.nodes[cur]
        op = node.op
        if isinstance(op, Reshape):
            cur = node.inputs[0]
        elif isinstance(op, ElementwiseAffine):
            probe = torch.zeros(1, *node.shape, dtype=dtype, device=dev)
            shift = op.forward(probe).reshape(-1)
            gain = op.forward(probe + 1).reshape(-1) - shift
            const = const + scale * shift[neuron]
            scale = scale * gain[neuron]
            cur = node.inputs[0]
        else:
            break
    sign = torch.tensor([1.0, -1.0], dtype=dtype, device=dev)
    if isinstance(op, Conv2d) and USE_PATCHES:
        patch, bias = unit_patch(op, neuron, dtype, scale)
        return {node.inputs[0]: patch}, const[:, None] * sign + bias
    unit = None
    if isinstance(op, Linear) and len(graph.nodes[node.inputs[0]].shape) == 1:
        unit = op.unit_backward(neuron, dtype)
    if unit is not None:
        coef, bias = unit
        coef = coef.to(dtype) * scale.reshape(-1, *([1] * (coef.ndim - 1)))
        A = coef[:, None] * sign.reshape(1, 2, *([1] * (coef.ndim - 1)))
        total = (const + scale * bias.to(dtype))[:, None] * sign
        return {node.inputs[0]: A}, total
    n = int(torch.Size(node.shape).numel())
    C = torch.zeros(R, 2, n, dtype=dtype, device=dev)
    rows = torch.arange(R, device=dev)
    C[rows, 0, neuron] = scale
    C[rows, 1, neuron] = -scale
    if cur == 0:
        return {0: C.reshape(R, 2, *node.shape)}, const[:, None] * sign
    return {cur: C.reshape(R, 2, *node.shape)}, const[:, None] * sign


# --- the specification ----------------------------------------------------------------------------


def ibp_spec_lower(graph: BoundGraph, threat: ThreatSet, C: torch.Tensor, bounds: Sequence[Bounds]) -> torch.Tensor:
    """IBP's lower bounds [B, K] of C·logits from node boxes ``bounds`` (the last affine layers
    applied to C exactly: Gowal et al.'s elision). Differentiable in the weights."""
    return _backward(graph, graph.output, C, bounds, threat, elide=True)


def crown_spec_lower(
    graph: BoundGraph, threat: ThreatSet, C: torch.Tensor, bounds: Sequence[Bounds], max_elements: int | None = None
) -> torch.Tensor:
    """CROWN's lower bounds [B, K] of C·logits, relaxing every ReLU on the given pre-activation
    ``bounds`` (IBP boxes: CROWN-IBP's bound). Differentiable in the weights."""
    return _spec_lower(graph, graph.output, C, bounds, threat, _budget(max_elements, C))


def spec_bounds(
    graph: BoundGraph,
    threat: ThreatSet,
    C: torch.Tensor,
    method: str = "crown",
    *,
    bounds: list[Bounds] | None = None,
    intermediate: str | None = None,
    alpha_steps: int = 20,
    alpha_lr: float = 0.25,
    max_elements: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> tuple[torch.Tensor, list[Bounds]]:
    """(lower bounds [B, K] of C·logits over the threat set, the node boxes used).

    ``method``: ``ibp``, ``crown`` or ``alpha-crown``; ``intermediate``: how the pre-activation
    boxes are computed (default: ``ibp`` for ``ibp``, ``crown`` otherwise; ``ibp`` with ``crown``
    is CROWN-IBP). ``bounds``: precomputed boxes (skips that step)."""
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r}; use one of {', '.join(METHODS)}")
    inter = intermediate or ("ibp" if method == "ibp" else "crown")
    if bounds is None:
        bounds = intermediate_bounds(graph, threat, inter, max_elements, progress)
    ibp_low = _backward(graph, graph.output, C, bounds, threat, elide=True)
    if method == "ibp":
        return ibp_low, bounds
    relax = _Relaxations(graph, bounds)
    low = torch.maximum(_spec_lower(graph, graph.output, C, bounds, threat, _budget(max_elements, C), relax), ibp_low)
    if method == "alpha-crown" and alpha_steps > 0:
        low = torch.maximum(low, _optimize_alpha(graph, C, bounds, threat, alpha_steps, alpha_lr))
    return low, bounds


def _optimize_alpha(graph, C, bounds, threat, steps: int, lr: float) -> torch.Tensor:
    """α-CROWN on the specification: lower ReLU slopes per row, initialised at CROWN's choice,
    improved by Adam on the sum of the bounds; returns the best bound seen per row."""
    relus = [i for i in graph.nonlinear() if isinstance(graph.nodes[i].op, LeakyReLU)]
    K = C.shape[1]
    alphas: dict[int, torch.Tensor] = {}
    for i in relus:
        lo, hi = bounds[graph.nodes[i].inputs[0]]
        _, _, low_slope, _ = graph.nodes[i].op.relax([(lo.detach(), hi.detach())])
        alphas[i] = low_slope[:, None].expand(-1, K, *low_slope.shape[1:]).clone().requires_grad_(True)
    if not alphas:
        return torch.full(C.shape[:2], float("-inf"), dtype=C.dtype, device=C.device)
    fixed = [(lo.detach(), hi.detach()) for lo, hi in bounds]
    relax = _Relaxations(graph, fixed)
    opt = torch.optim.Adam(list(alphas.values()), lr=lr)
    best = torch.full(C.shape[:2], float("-inf"), dtype=C.dtype, device=C.device)
    with torch.enable_grad():
        for _ in range(steps):
            low = _backward(graph, graph.output, C.detach(), fixed, threat, alphas, relax=relax)
            best = torch.maximum(best, low.detach())
            # gradients for the slopes only: nothing accumulates in the model's parameters
            grads = torch.autograd.grad(-low.sum(), list(alphas.values()))
            for a, grad in zip(alphas.values(), grads):
                a.grad = grad
            opt.step()
            with torch.no_grad():
                for i, a in alphas.items():
                    a.clamp_(graph.nodes[i].op.a, 1.0)
        with torch.no_grad():
            best = torch.maximum(best, _backward(graph, graph.output, C.detach(), fixed, threat, alphas, relax=relax))
    return best
