"""Exact verification of small ReLU networks: a mixed-integer linear program per sample.

For one image x, true class y and radius ε (ℓ∞ only: an ℓ2 ball is not a polyhedron), the program
has a variable for every neuron of every node of the traced graph, the image's pixels in the
threat box ``[max(x−ε, 0), min(x+ε, 1)]``, an equality for every affine layer, and for every
ReLU whose pre-activation box (from CROWN) contains 0 a binary variable with the big-M
formulation of Tjeng, Xiao & Tedrake 2019 ("Evaluating Robustness of Neural Networks with Mixed
Integer Programming"): y ≥ x, y ≥ a·x, y ≤ x − (1−a)·l·(1−z), y ≤ a·x + (1−a)·u·z. Max pooling
gets one binary per window input that can be the maximum. Stable neurons are linear.

For every class j ≠ y whose CROWN bound is not yet positive, the solver (SciPy's ``milp``: HiGHS)
minimizes z_y − z_j. A sample ends

* **certified**: every such minimum's dual bound is > 0;
* **falsified**: the solver found a point with z_y − z_j < 0 and the float32 model, run on that
  point (clipped to the threat box), misclassifies it — a counterexample, counted like an attack's;
* **timeout**: neither within ``time_limit`` seconds;
* **undecided**: the solver finished but its minimum is within its tolerance of 0
  (``TOLERANCE``), or its counterexample does not reproduce in float32 (rounding).

Boxes are widened by 1e-6 (relative) before they are used as big-M constants, so float rounding
in the bounds never cuts off a real point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds as SciBounds
from scipy.optimize import LinearConstraint, milp

from . import ops
from .graph import BoundGraph

__all__ = ["ExactVerifier", "ExactOutcome", "count_binaries"]

_PAD = 1e-6
TOLERANCE = 1e-6  # a minimum margin within this of 0 (logits) is within the solver's tolerances: undecided


@dataclass
class ExactOutcome:
    """status: certified / falsified / timeout / undecided; lower: a lower bound of the smallest margin over
    the threat set (logits; the MILP's dual bound, or the CROWN bound where that is larger);
    upper: the smallest margin of a point found (None if none); counterexample: the falsifying
    image [*shape] (pixel space) or None; seconds: solver time; binaries: integer variables."""

    status: str
    lower: float
    upper: float | None
    counterexample: torch.Tensor | None
    seconds: float
    binaries: int


def _padded(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lo - _PAD * (1 + np.abs(lo)), hi + _PAD * (1 + np.abs(hi))


def count_binaries(graph: BoundGraph, bounds) -> torch.Tensor:
    """Per sample [B]: the binary variables its program needs (unstable ReLUs, and inputs of max
    pooling windows that can be the maximum)."""
    total = None
    for i in graph.nonlinear():
        node = graph.nodes[i]
        lo, hi = bounds[node.inputs[0]]
        op = node.op
        if isinstance(op, ops.LeakyReLU):
            plo = lo - _PAD * (1 + lo.abs())
            phi = hi + _PAD * (1 + hi.abs())
            n = ((plo < 0) & (phi > 0)).flatten(1).sum(1)
        else:
            assert isinstance(op, ops.MaxPool2d)  # the only other nonlinear operator
            _, dominated, _ = op.select(lo, hi)
            lw = op._windows(lo, float("-inf"))
            hw = op._windows(hi, float("-inf"))
            cand = (hw >= lw.amax(2, keepdim=True)) & ~dominated
            n = cand.flatten(1).sum(1)
        total = n if total is None else total + n
    return total if total is not None else torch.zeros(bounds[0][0].shape[0], dtype=torch.long)


class ExactVerifier:
    """MILP verification on one traced graph; the affine layers' sparse Jacobians are built once."""

    def __init__(self, graph: BoundGraph, model: torch.nn.Module, time_limit: float = 60.0):
        self.graph, self.model, self.time_limit = graph, model, float(time_limit)
        self._jac: dict[int, tuple[sp.csr_matrix, np.ndarray]] = {}
        self._alias: dict[int, int] = {}
        for i, node in enumerate(graph.nodes[1:], 1):
            if isinstance(node.op, ops.Reshape):
                self._alias[i] = self._alias.get(node.inputs[0], node.inputs[0])

    def _jacobian(self, i: int) -> tuple[sp.csr_matrix, np.ndarray]:
        """(J, b) with node_i = J·input + b for an affine node, float64, J sparse."""
        if i in self._jac:
            return self._jac[i]
        node = self.graph.nodes[i]
        src = self.graph.nodes[node.inputs[0]]
        n_in = int(np.prod(src.shape))
        n_out = int(np.prod(node.shape))
        dev = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            zero = torch.zeros(1, *src.shape, dtype=torch.float64, device=dev)
            b = node.op.forward(zero).reshape(-1)
            chunk = max(1, (1 << 22) // max(n_out, 1))
            rows, cols, vals = [], [], []
            for start in range(0, n_in, chunk):
                stop = min(n_in, start + chunk)
                basis = torch.zeros(stop - start, n_in, dtype=torch.float64, device=dev)
                basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
                out = node.op.forward(basis.reshape(-1, *src.shape)).reshape(stop - start, n_out) - b
                nz = out.nonzero()
                cols.append((nz[:, 0] + start).cpu().numpy())
                rows.append(nz[:, 1].cpu().numpy())
                vals.append(out[nz[:, 0], nz[:, 1]].cpu().numpy())
        J = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_out, n_in))
        self._jac[i] = (J, b.cpu().numpy())
        return self._jac[i]

    def minimize(
        self, x: torch.Tensor, y: int, j: int, eps: float, bounds, time_limit: float | None = None
    ) -> tuple[float | None, float | None, torch.Tensor | None]:
        """min of z_y − z_j over the threat set of one sample: (the solver's minimum, its proven lower
        bound, the minimizing image clipped to the threat box), Nones where it found none."""
        prog = _Program(self, x, eps, bounds)
        res = prog.solve(prog.margin_objective(y, j), self.time_limit if time_limit is None else time_limit)
        dual = getattr(res, "mip_dual_bound", None)
        point = prog.image(res.x) if res.x is not None else None
        return (None if res.fun is None else float(res.fun)), (None if dual is None else float(dual)), point

    def verify(
        self, x: torch.Tensor, y: int, eps: float, bounds, crown_lower: torch.Tensor, others: torch.Tensor
    ) -> ExactOutcome:
        """One sample: ``x`` [*shape] in [0,1], its class ``y``, the boxes of every node for this
        sample (``bounds[i]`` = (lo, hi), each [*shape_i], from CROWN), ``crown_lower`` [C−1] the
        CROWN lower bounds of z_y − z_j for the classes ``others`` [C−1]. Classes whose CROWN bound
        is positive are not solved; the others in increasing order of that bound, until the first
        counterexample that the float32 model misclassifies."""
        t0 = time.perf_counter()
        prog = _Program(self, x, eps, bounds)
        best = [float(v) for v in crown_lower]  # per class: the best lower bound known so far
        upper: float | None = None
        witness = None
        timed_out = False
        for k in torch.argsort(crown_lower).tolist():
            if best[k] > 0:
                continue
            left = self.time_limit - (time.perf_counter() - t0)
            if left <= 0:
                timed_out = True
                break
            res = prog.solve(prog.margin_objective(y, int(others[k])), left)
            dual = getattr(res, "mip_dual_bound", None)  # proven (HiGHS stops at a relative gap of 1e-4)
            if dual is not None and np.isfinite(dual):
                best[k] = max(best[k], float(dual))
            if res.x is not None and res.fun is not None and res.fun < 0:
                cand = prog.image(res.x)
                logits = self._logits(cand)
                margin = float(logits[y] - torch.cat([logits[:y], logits[y + 1 :]]).max())
                upper = margin if upper is None else min(upper, margin)
                if int(logits.argmax()) != y:
                    witness = cand
                    break
            if res.status != 0 and not best[k] > 0:
                timed_out = True
        lower = min(best) if upper is None else min(min(best), upper)
        seconds = time.perf_counter() - t0
        if witness is not None:
            status = "falsified"
        elif timed_out:
            status = "timeout"
        else:
            status = "certified" if lower > TOLERANCE else "undecided"
        return ExactOutcome(status, lower, upper, witness, seconds, prog.binaries)

    def _logits(self, img: torch.Tensor) -> torch.Tensor:
        """The model's own logits (its dtype: float32 for a float32 model) at one image."""
        p = next(self.model.parameters(), None)
        dev, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
        with torch.no_grad():
            return self.model(img[None].to(dev, dtype)).double().cpu()[0]


class _Program:
    """The constraints of one sample's MILP (every objective shares them)."""

    def __init__(self, ver: ExactVerifier, x: torch.Tensor, eps: float, bounds):
        self.ver = ver
        g = ver.graph
        xf = x.detach().cpu()  # the image in its own dtype: the counterexample is clipped to this box
        self.lo_img = (xf - eps).clamp(min=0.0)
        self.hi_img = (xf + eps).clamp(max=1.0)
        self.shape = tuple(x.shape)
        self.offset: dict[int, int] = {}
        lb: list[np.ndarray] = []
        ub: list[np.ndarray] = []
        integ: list[np.ndarray] = []
        self.n = 0
        rows: list[sp.coo_matrix] = []
        rlo: list[np.ndarray] = []
        rhi: list[np.ndarray] = []
        self.binaries = 0

        def new_vars(lo: np.ndarray, hi: np.ndarray, integer: bool = False) -> np.ndarray:
            idx = np.arange(self.n, self.n + lo.size)
            self.n += lo.size
            lb.append(lo)
            ub.append(hi)
            integ.append(np.full(lo.size, 1 if integer else 0))
            return idx

        def add_rows(r: np.ndarray, c: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
            """Constraint rows lo ≤ Σ v·var ≤ hi; ``r`` numbers them from 0 within this call."""
            rows.append((r, c, v))
            rlo.append(lo)
            rhi.append(hi)

        box = [tuple(t.detach().double().cpu().reshape(-1).numpy() for t in b) for b in bounds]
        self.idx: dict[int, np.ndarray] = {
            0: new_vars(self.lo_img.double().reshape(-1).numpy(), self.hi_img.double().reshape(-1).numpy())
        }
        for i, node in enumerate(g.nodes[1:], 1):
            if i in ver._alias:
                self.idx[i] = self.idx[ver._alias[i]]
                continue
            lo, hi = _padded(*box[i])
            op = node.op
            ins = [self.idx[j] for j in node.inputs]
            if isinstance(op, (ops.Add, ops.Sub)):
                out = new_vars(lo, hi)
                m = out.size
                r = np.arange(m)
                sign = 1.0 if isinstance(op, ops.Add) else -1.0
                add_rows(
                    np.concatenate([r, r, r]),
                    np.concatenate([out, ins[0], ins[1]]),
                    np.concatenate([np.ones(m), -np.ones(m), -sign * np.ones(m)]),
                    np.zeros(m),
                    np.zeros(m),
                )
            elif isinstance(op, ops.LeakyReLU):
                plo, phi = _padded(*box[node.inputs[0]])
                a = op.a
                out = new_vars(lo, hi)
                xin = ins[0]
                active, inactive = plo >= 0, phi <= 0
                unstable = ~(active | inactive)
                # stable: y = x (active) or y = a·x (inactive)
                st = np.nonzero(~unstable)[0]
                slope = np.where(active[st], 1.0, a)
                r = np.arange(st.size)
                add_rows(
                    np.concatenate([r, r]),
                    np.concatenate([out[st], xin[st]]),
                    np.concatenate([np.ones(st.size), -slope]),
                    np.zeros(st.size),
                    np.zeros(st.size),
                )
                un = np.nonzero(unstable)[0]
                k = un.size
                if k:
                    z = new_vars(np.zeros(k), np.ones(k), integer=True)
                    self.binaries += k
                    yv, xv, l_, u_ = out[un], xin[un], plo[un], phi[un]
                    r = np.arange(k)
                    inf = np.full(k, np.inf)
                    # y − x ≥ 0 ; y − a·x ≥ 0
                    add_rows(
                        np.concatenate([r, r]),
                        np.concatenate([yv, xv]),
                        np.concatenate([np.ones(k), -np.ones(k)]),
                        np.zeros(k),
                        inf,
                    )
                    add_rows(
                        np.concatenate([r, r]),
                        np.concatenate([yv, xv]),
                        np.concatenate([np.ones(k), -a * np.ones(k)]),
                        np.zeros(k),
                        inf,
                    )
                    # y − x − (1−a)·l·z ≤ −(1−a)·l
                    add_rows(
                        np.concatenate([r, r, r]),
                        np.concatenate([yv, xv, z]),
                        np.concatenate([np.ones(k), -np.ones(k), -(1 - a) * l_]),
                        -inf,
                        -(1 - a) * l_,
                    )
                    # y − a·x − (1−a)·u·z ≤ 0
                    add_rows(
                        np.concatenate([r, r, r]),
                        np.concatenate([yv, xv, z]),
                        np.concatenate([np.ones(k), -a * np.ones(k), -(1 - a) * u_]),
                        -inf,
                        np.zeros(k),
                    )
            elif isinstance(op, ops.MaxPool2d):
                out = new_vars(lo, hi)
                self._maxpool(op, node, ins[0], out, box[node.inputs[0]], new_vars, add_rows)
            else:  # affine in one input
                J, b = ver._jacobian(i)
                out = new_vars(lo, hi)
                Jc = J.tocoo()
                m = out.size
                r = np.concatenate([np.arange(m), Jc.row])
                c = np.concatenate([out, ins[0][Jc.col]])
                v = np.concatenate([np.ones(m), -Jc.data])
                add_rows(r, c, v, b, b)
            self.idx[i] = out
        self.lb, self.ub = np.concatenate(lb), np.concatenate(ub)
        self.integrality = np.concatenate(integ)
        r_all, c_all, v_all, start = [], [], [], 0
        for (r, c, v), lo_ in zip(rows, rlo):
            r_all.append(r + start)
            c_all.append(c)
            v_all.append(v)
            start += lo_.size
        self.A = sp.csr_matrix((np.concatenate(v_all), (np.concatenate(r_all), np.concatenate(c_all))), shape=(start, self.n))
        self.rlo, self.rhi = np.concatenate(rlo), np.concatenate(rhi)

    def _maxpool(self, op: ops.MaxPool2d, node, xin: np.ndarray, out: np.ndarray, in_box, new_vars, add_rows) -> None:
        """y_o ≥ x_i for every input i of window o; if no input dominates the window, one binary
        per candidate (u_i ≥ the window's largest lower bound), Σ z = 1 and
        y_o ≤ x_i + (U_o − l_i)(1 − z_i)."""
        C = node.shape[0]
        H, W = op.in_shape[-2:]
        ph, pw = op.padding
        Wp = W + 2 * pw
        idx = op._index(torch.device("cpu")).numpy()  # [kk, L] into the padded map
        kk, L = idx.shape
        pr, pc = idx // Wp - ph, idx % Wp - pw
        real = (pr >= 0) & (pr < H) & (pc >= 0) & (pc < W)
        flat_in = np.where(real, pr * W + pc, 0)  # [kk, L] into one channel's map
        lo_in, hi_in = _padded(*in_box)
        lo_in, hi_in = lo_in.reshape(C, H * W), hi_in.reshape(C, H * W)
        cols_in = xin.reshape(C, H * W)
        out2 = out.reshape(C, L)
        lw = np.where(real[None], lo_in[:, flat_in], -np.inf)  # [C, kk, L]
        hw = np.where(real[None], hi_in[:, flat_in], -np.inf)
        best_lo = lw.max(1)  # [C, L]
        top = hw.max(1)
        # y ≥ x_i for every real input of every window
        cc, kq, ll = np.nonzero(np.broadcast_to(real[None], (C, kk, L)))
        m = cc.size
        r = np.arange(m)
        add_rows(
            np.concatenate([r, r]),
            np.concatenate([out2[cc, ll], cols_in[cc, flat_in[kq, ll]]]),
            np.concatenate([np.ones(m), -np.ones(m)]),
            np.zeros(m),
            np.full(m, np.inf),
        )
        cand = real[None] & (hw >= best_lo[:, None])  # inputs that can be the maximum
        n_cand = cand.sum(1)
        single = n_cand == 1  # exactly one can be the maximum: y = that input
        cs, ls = np.nonzero(single)
        ks = cand[cs, :, ls].argmax(1)
        r = np.arange(cs.size)
        add_rows(
            np.concatenate([r, r]),
            np.concatenate([out2[cs, ls], cols_in[cs, flat_in[ks, ls]]]),
            np.concatenate([np.ones(cs.size), -np.ones(cs.size)]),
            np.zeros(cs.size),
            np.zeros(cs.size),
        )
        cc, kq, ll = np.nonzero(cand & ~single[:, None])
        k = cc.size
        if not k:
            return
        z = new_vars(np.zeros(k), np.ones(k), integer=True)
        self.binaries += k
        r = np.arange(k)
        big = top[cc, ll] - lo_in[cc, flat_in[kq, ll]]
        # y − x_i + big·z_i ≤ big
        add_rows(
            np.concatenate([r, r, r]),
            np.concatenate([out2[cc, ll], cols_in[cc, flat_in[kq, ll]], z]),
            np.concatenate([np.ones(k), -np.ones(k), big]),
            np.full(k, -np.inf),
            big,
        )
        # Σ_i z_i = 1 per window
        windows = cc * L + ll
        uniq, row = np.unique(windows, return_inverse=True)
        add_rows(row, z, np.ones(k), np.ones(uniq.size), np.ones(uniq.size))

    def margin_objective(self, y: int, j: int) -> np.ndarray:
        """The cost vector of z_y − z_j."""
        out = self.idx[self.ver.graph.output]
        c = np.zeros(self.n)
        c[out[y]] += 1.0
        c[out[j]] -= 1.0
        return c

    def solve(self, c: np.ndarray, time_limit: float):
        return milp(
            c,
            integrality=self.integrality,
            bounds=SciBounds(self.lb, self.ub),
            constraints=LinearConstraint(self.A, self.rlo, self.rhi),
            options={"time_limit": max(float(time_limit), 0.01), "disp": False},
        )

    def image(self, values: np.ndarray) -> torch.Tensor:
        """The solution's pixels as a float32 image, clipped to the threat box."""
        px = torch.from_numpy(values[self.idx[0]].copy()).to(self.lo_img.dtype).reshape(self.shape)
        return torch.minimum(torch.maximum(px, self.lo_img), self.hi_img)
