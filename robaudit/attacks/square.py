"""Square Attack — Andriushchenko, Croce, Flammarion & Hein, *Square Attack: a query-efficient
black-box adversarial attack via random search* (ECCV 2020).

Score-based black-box random search: it only queries the model's logits (forward passes, never a
gradient). Each iteration proposes a change of the current best perturbation inside a random
square window whose side follows a decreasing schedule, and keeps it if the margin loss
z_y − max_{i≠y} z_i decreases. A sample stops being queried as soon as it is misclassified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from .. import rng
from ..errors import UsageError
from ..geometry.margin import margin
from ..threat import Norm, ThreatModel
from .base import ATTACKS, Attack, predict

__all__ = ["SquareAttack"]

# the paper's schedule: p halves after these iterations (of a 10 000-query budget)
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_RESAMPLE = "square:resample"  # the stream family of the ℓ∞ proposals' resampled signs
_BLOCK = 64  # iterations whose per-sample draws are hashed at once


def _signs(shape, generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform ±1 of ``like``'s dtype and device (a SampleRNG: one stream per row of dim 0)."""
    return rng.signs(shape, generator, like.device, like.dtype)


def _flips_from_words(w: torch.Tensor, c: int, like: torch.Tensor) -> torch.Tensor:
    """[n,c,1,1] of ±1 from one 32-bit word per row: uniform over the 2^c − 1 patterns with at
    least one −1 (c ≤ 30)."""
    r = 1 + ((w * (2**c - 1)) >> 32)
    bits = (r[:, None].to(like.device) >> torch.arange(c, device=like.device)[None, :]) & 1
    return (1 - 2 * bits).to(like.dtype).view(-1, c, 1, 1)


def _nonempty_flips(n: int, c: int, generator, like: torch.Tensor, counter: int | None = None) -> torch.Tensor:
    """[n,c,1,1] of ±1, uniform over the 2^c − 1 patterns with at least one −1 (c ≤ 30; above,
    uniform over all patterns, where the all-(+1) one has probability 2^−c). With a SampleRNG the
    draw is number ``counter`` of the rows' own "resample" streams: only the rows that need it draw."""
    if rng.is_sample_rng(generator):
        generator = generator.fork(_RESAMPLE)
        if c > 30:
            return generator.signs((c, 1, 1), dtype=like.dtype, counter=counter).to(like.device)
        return _flips_from_words(generator.words(1, counter=counter)[:, 0], c, like)
    if c > 30:
        return _signs((n, c, 1, 1), generator, like)
    r = torch.randint(1, 2**c, (n, 1), generator=generator, device=like.device)
    bits = (r >> torch.arange(c, device=like.device)[None, :]) & 1
    return (1 - 2 * bits).to(like.dtype).view(n, c, 1, 1)


def _randint(high: int, n: int, generator, device) -> torch.Tensor:
    return rng.randint(0, high, (n,), generator, device)


class _Draws:
    """One proposal's random numbers. From a SampleRNG all of an iteration's words come from one
    draw (these draws are tiny, so the per-call cost would dominate) — passed in as ``words``
    when precomputed for a block of iterations (:meth:`robaudit.rng.SampleRNG.words_block`);
    from a torch.Generator (or None), torch's own draws, one call each."""

    def __init__(self, generator, n: int, like: torch.Tensor, words: int, precomputed: torch.Tensor | None = None) -> None:
        self.gen, self.n, self.like = generator, n, like
        self.keyed = precomputed is not None or rng.is_sample_rng(generator)
        self.w: torch.Tensor | None  # the words of a keyed draw (None: draws come from a torch.Generator)
        if precomputed is not None:
            self.w = precomputed
        else:
            self.w = generator.words(words).to(like.device) if self.keyed else None
        self.col = 0

    def _word(self) -> torch.Tensor:
        assert self.w is not None  # keyed draws only
        w = self.w[:, self.col]
        self.col += 1
        return w

    def randint(self, high: int) -> torch.Tensor:
        """[n] integers in [0, high)."""
        if self.keyed:
            return (self._word() * high) >> 32
        return _randint(high, self.n, self.gen, self.like.device)

    def signs(self, c: int) -> torch.Tensor:
        """[n, c, 1, 1] of ±1 (c ≤ 32 from one word; more channels: a draw of their own)."""
        if self.keyed and c <= 32:
            bits = (self._word()[:, None] >> torch.arange(c, device=self.like.device)) & 1
            return (1 - 2 * bits).to(self.like.dtype).view(self.n, c, 1, 1)
        if self.keyed:
            self._word()  # keep the word count fixed
        return _signs((self.n, c, 1, 1), self.gen, self.like)

    def coin(self) -> torch.Tensor:
        """[n] fair booleans."""
        if self.keyed:
            return (self._word() >> 31) == 1
        return rng.uniform((self.n,), self.gen, self.like.device) > 0.5


@lru_cache(maxsize=256)
def _bands(s: int, size: int, device: torch.device) -> torch.Tensor:
    """[size − s + 1, size] bool: row i is True on [i, i + s) (a window's rows, or its columns)."""
    start = torch.arange(size - s + 1)[:, None]
    idx = torch.arange(size)[None, :]
    return ((idx >= start) & (idx < start + s)).to(device)


def _window(pos_h: torch.Tensor, pos_w: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """Per-sample boolean mask [n,1,h,w] of the s×s square whose top-left corner is (pos_h, pos_w)."""
    in_h = _bands(s, h, pos_h.device)[pos_h]  # [n,h]
    in_w = _bands(s, w, pos_w.device)[pos_w]  # [n,w]
    return (in_h[:, :, None] & in_w[:, None, :])[:, None]


def _place(pattern: torch.Tensor, pos_h: torch.Tensor, pos_w: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-sample patterns [n,s,s] written at (pos_h, pos_w) of a zero [n,1,h,w] canvas."""
    n, s = pattern.shape[0], pattern.shape[1]
    rows = torch.arange(h, device=pattern.device)[None, :] - pos_h[:, None]  # [n,h]
    cols = torch.arange(w, device=pattern.device)[None, :] - pos_w[:, None]  # [n,w]
    inside = ((rows >= 0) & (rows < s))[:, :, None] & ((cols >= 0) & (cols < s))[:, None, :]
    flat = rows.clamp(0, s - 1)[:, :, None] * s + cols.clamp(0, s - 1)[:, None, :]  # [n,h,w]
    values = pattern.reshape(n, s * s).gather(1, flat.reshape(n, h * w)).reshape(n, h, w)
    return (values * inside)[:, None]


def _pseudo_gaussian_rectangle(a: int, b: int) -> torch.Tensor:
    """An a×b bump: concentric rectangles around the centre weighted 1/(k+1)², unit ℓ2 norm."""
    delta = torch.zeros(a, b, dtype=torch.float64)
    if a == 0 or b == 0:
        return delta
    ch, cw = a // 2, b // 2
    for k in range(max(ch, cw) + 1):
        delta[max(ch - k, 0) : min(ch + k + 1, a), max(cw - k, 0) : min(cw + k + 1, b)] += 1.0 / (k + 1) ** 2
    return delta / delta.norm()


@lru_cache(maxsize=64)
def _square_pattern(s: int) -> torch.Tensor:
    """The paper's ℓ2 update shape for an s×s window: a positive bump on the top half and a
    negative one on the bottom half, unit ℓ2 norm (float64, CPU; cast at use)."""
    delta = torch.zeros(s, s, dtype=torch.float64)
    delta[: s // 2] = _pseudo_gaussian_rectangle(s // 2, s)
    delta[s // 2 :] = -_pseudo_gaussian_rectangle(s - s // 2, s)
    return delta / delta.norm()


@ATTACKS.register("square")
@dataclass
class SquareAttack(Attack):
    """Square Attack — Andriushchenko, Croce, Flammarion & Hein, *Square Attack: a query-efficient
    black-box adversarial attack via random search* (ECCV 2020). Norms: ℓ∞, ℓ2.

    Score-based black-box: forward passes only, on the margin loss z_y − max_{i≠y} z_i (minimised).
    Arguments: n_queries=5000 queries per sample at most (the initialization included);
    p_init=0.8 (AutoAttack's value for both norms), the initial fraction of pixels a square
    covers, halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a
    10 000-query budget (rescaled to n_queries). ℓ∞ starts from vertical stripes of ±ε and
    proposes ±ε per channel on a square; ℓ2 starts from a grid of ±pseudo-Gaussian bumps and moves
    mass between two squares. Samples stop being queried once misclassified. Needs [B,C,H,W] inputs.

        >>> SquareAttack(n_queries=5000).run(model, x, y, ThreatModel(Norm.LINF, 8/255), generator)
    """

    name = "square"
    per_sample_rng = True
    kind = "black-box"
    norms = (Norm.LINF, Norm.L2)
    n_queries: int = 5000
    p_init: float = 0.8

    def __post_init__(self) -> None:
        if self.n_queries < 1:
            raise UsageError(f"{self.name}: n_queries must be >= 1")
        if not 0.0 < self.p_init <= 1.0:
            raise UsageError(f"{self.name}: p_init must be in (0, 1], got {self.p_init}")

    def _p(self, it: int) -> float:
        """Fraction of pixels of the square at iteration ``it`` (0-based)."""
        scaled = int(it / self.n_queries * 10000)
        return self.p_init / 2 ** sum(scaled > t for t in _P_HALVINGS)

    # -- initializations ---------------------------------------------------------------------

    def _init_linf(self, x: torch.Tensor, eps: float, generator) -> torch.Tensor:
        n, c, _, w = x.shape
        return (x + eps * _signs((n, c, 1, w), generator, x)).clamp(0.0, 1.0)

    def _init_l2(self, x: torch.Tensor, eps: float, generator) -> torch.Tensor:
        n, c, h, w = x.shape
        s = max(min(h, w) // 5, 1)
        nh, nw = h // s, w // s
        top, left = (h - s * nh) // 2, (w - s * nw) // 2
        pat = _square_pattern(s).to(device=x.device, dtype=x.dtype)
        tiled, tiled_t = pat.repeat(nh, nw), pat.T.repeat(nh, nw)  # [nh·s, nw·s]
        flip = rng.uniform((n, 1, nh, nw), generator, x.device) > 0.5
        flip = flip.repeat_interleave(s, 2).repeat_interleave(s, 3)
        sign = _signs((n, c, nh, nw), generator, x).repeat_interleave(s, 2).repeat_interleave(s, 3)
        delta = torch.zeros_like(x)
        delta[:, :, top : top + nh * s, left : left + nw * s] = torch.where(flip, tiled_t, tiled) * sign
        nrm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + delta / nrm * eps).clamp(0.0, 1.0)

    # -- proposals ---------------------------------------------------------------------------

    def _propose_linf(
        self,
        xc,
        xb,
        eps: float,
        p: float,
        generator,
        it: int = 0,
        words: torch.Tensor | None = None,
        flip_words: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``words`` [n, 3] / ``flip_words`` [n]: this iteration's draws, precomputed (else drawn)."""
        n, c, h, w = xc.shape
        s = max(min(int(round(math.sqrt(p * h * w))), min(h, w) - 1), 1)  # = _side_linf(it)
        draw = _Draws(generator, n, xc, 3, words)
        pos_h, pos_w = draw.randint(h - s + 1), draw.randint(w - s + 1)
        mask = _window(pos_h, pos_w, s, h, w)
        delta = xb - xc
        sign = draw.signs(c)
        x_new = torch.where(mask, eps * sign, delta).add_(xc).clamp_(0.0, 1.0)  # = (xc + where(...)).clamp(0, 1)
        if eps <= 0:
            return x_new
        # The paper resamples a proposal that leaves the square unchanged (it already holds ±ε per
        # channel there). For ε > 0 only one sign vector can do that, so resampling until it
        # changes is drawing uniformly among the others: flip a uniform non-empty set of channels.
        # "Unchanged": every pixel of the window within 1e-7 of the current best point.
        same = (x_new - xb).abs_().masked_fill_(~mask, 0.0).flatten(1).amax(dim=1) < 1e-7
        if not bool(same.any()):  # most iterations: no row to resample
            return x_new
        rows_ = same.nonzero().squeeze(1)
        if flip_words is not None:  # drawn already, for every row: take the resampled rows' own
            flips = _flips_from_words(flip_words[rows_.to(flip_words.device)], c, xc)
        else:
            flips = _nonempty_flips(int(rows_.numel()), c, rng.rows(generator, rows_), xc, counter=it)
        x_new[rows_] = torch.where(mask[rows_], eps * (sign[rows_] * flips), delta[rows_]).add_(xc[rows_]).clamp_(0.0, 1.0)
        return x_new

    @staticmethod
    def _propose_linf_drawn(xc, xb, eps: float, s: int, pos_h, pos_w, sign, flip) -> torch.Tensor:
        """:meth:`_propose_linf` with this iteration's draws decoded already (``_BlockDraws``): the
        window's side ``s`` and corner, the signs [n,c,1,1] and the resampling flips [n,c,1,1] —
        the same arithmetic, in fewer tensor operations (a scan's path)."""
        h, w = xc.shape[2], xc.shape[3]
        mask = _window(pos_h, pos_w, s, h, w)
        delta = xb - xc
        x_new = torch.where(mask, eps * sign, delta).add_(xc).clamp_(0.0, 1.0)
        if eps <= 0:
            return x_new
        same = torch.where(mask, (x_new - xb).abs_(), 0.0).flatten(1).amax(dim=1) < 1e-7
        if bool(same.any()):  # resample: a uniform non-empty set of channels flipped (see _propose_linf)
            rows_ = same.nonzero().squeeze(1)
            x_new[rows_] = (
                torch.where(mask[rows_], eps * (sign[rows_] * flip[rows_]), delta[rows_]).add_(xc[rows_]).clamp_(0.0, 1.0)
            )
        return x_new

    def _side_linf(self, it: int, h: int, w: int) -> int:
        """The side of iteration ``it``'s ℓ∞ square."""
        return max(min(int(round(math.sqrt(self._p(it) * h * w))), min(h, w) - 1), 1)

    def _propose_l2(self, xc, xb, eps: float, p: float, generator, words: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = xc.shape
        s = max(int(round(math.sqrt(p * h * w))), 3)
        s = min(s + 1 if s % 2 == 0 else s, min(h, w))
        dev = xc.device
        draw = _Draws(generator, n, xc, 6, words)
        h1, w1 = draw.randint(h - s + 1), draw.randint(w - s + 1)
        h2, w2 = draw.randint(h - s + 1), draw.randint(w - s + 1)
        m1 = _window(h1, w1, s, h, w).to(xc.dtype)
        m2 = _window(h2, w2, s, h, w).to(xc.dtype)
        delta = xb - xc
        norm_window = (delta * m1).pow(2).sum((2, 3), keepdim=True).sqrt()  # [n,c,1,1]
        norm_image = delta.pow(2).sum((1, 2, 3), keepdim=True).sqrt()  # [n,1,1,1]
        norm_windows = (delta * torch.maximum(m1, m2)).pow(2).sum((2, 3), keepdim=True).sqrt()

        pat = _square_pattern(s).to(device=dev, dtype=xc.dtype)
        flip = draw.coin().view(-1, 1, 1)
        pats = torch.where(flip, pat.T, pat).expand(n, s, s)
        new = _place(pats, h1, w1, h, w) * draw.signs(c)
        new = new + delta * m1 / (1e-10 + norm_window)
        # spend the budget freed in both windows (and any unused ε) on window 1, per channel
        budget = ((eps**2 - norm_image**2).clamp_min(0) / c + norm_windows**2).sqrt()
        new = new / new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * budget
        delta = torch.where(m1.bool(), new, delta * (1 - m2))
        nrm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (xc + delta / nrm * eps).clamp(0.0, 1.0)

    # -- driver ------------------------------------------------------------------------------

    def max_passes(self, num_classes: int) -> tuple[int, int]:
        return self.n_queries + 2, 0  # the clean forward, n_queries queries, run()'s success check

    def _perturb(self, model, x, y, threat: ThreatModel, generator) -> torch.Tensor:
        if x.dim() != 4:
            raise UsageError(f"attack {self.name!r} needs image inputs [B,C,H,W]; got shape {tuple(x.shape)}")
        eps = threat.eps
        linf = threat.norm is Norm.LINF
        clean = predict(model, x, self.counter)
        x_best = x.clone()
        act = (clean.argmax(1) == y).nonzero().squeeze(1)  # already misclassified: keep x
        if act.numel() == 0:
            return x_best
        xc, yc = x[act], y[act]
        gen = rng.rows(generator, act)
        xb = self._init_linf(xc, eps, gen) if linf else self._init_l2(xc, eps, gen)
        logits = predict(model, xb, self.counter)
        bm = margin(logits, yc)
        wrong = logits.argmax(1) != yc
        # the samples still robust, compacted (x, best point, label, best margin); a sample leaves
        # once misclassified, its best point written back
        h, w = x.shape[2], x.shape[3]
        block = (
            _BlockDraws(
                gen,
                3 if linf else 6,
                linf,
                x.shape[1],
                xc.dtype,
                (lambda i: self._side_linf(i, h, w)) if linf else None,
                (h, w),
            )
            if rng.is_sample_rng(gen)
            else None
        )
        total = max(self.n_queries - 1, 1)
        for it in range(self.n_queries):
            if bool(wrong.any()):
                x_best[act[wrong]] = xb[wrong]
                keep = ~wrong
                act, xc, xb, yc, bm = act[keep], xc[keep], xb[keep], yc[keep], bm[keep]
                gen = rng.rows(gen, keep)
                if block is not None:
                    block.keep(keep)
                if act.numel() == 0:
                    break
            if it == self.n_queries - 1:  # the initialization used one query
                break
            p = self._p(it)
            words, flips = block.at(it, self.n_queries - 1) if block is not None else (None, None)
            if linf and block is not None and block.decoded:
                x_new = self._propose_linf_drawn(xc, xb, eps, *block.linf(it))
            elif linf:
                x_new = self._propose_linf(xc, xb, eps, p, gen, it, words, flips)
            else:
                x_new = self._propose_l2(xc, xb, eps, p, gen, words)
            logits = predict(model, x_new, self.counter)
            m = margin(logits, yc)
            wrong = logits.argmax(1) != yc
            better = (m < bm) | wrong
            xb = torch.where(better.view(-1, 1, 1, 1), x_new, xb)
            bm = torch.where(better, m, bm)
            if it % 16 == 15:
                self._report((it + 1) / total)
        x_best[act] = xb
        return x_best


class _BlockDraws:
    """The per-sample words of ``_BLOCK`` iterations at once (one batched hash instead of a few
    dozen small tensor ops per iteration): iteration ``it`` takes draw ``position + it`` of the
    rows' streams (what drawing one per iteration gives) and, for ℓ∞, draw ``it`` of their
    resample streams. Exactly the numbers of :class:`_Draws` and :func:`_nonempty_flips`.

    For ℓ∞ (``side``: iteration → the square's side; at most 30 channels) the block's words are
    also decoded at once into each iteration's corner, signs and resampling flips
    (:meth:`linf`) — the integer arithmetic of :class:`_Draws`, vectorized over the block."""

    def __init__(
        self,
        gen,
        words: int,
        linf: bool,
        channels: int,
        dtype: torch.dtype = torch.float32,
        side=None,
        shape: tuple[int, int] = (0, 0),
    ) -> None:
        self.gen, self.words, self.base = gen, words, gen.position
        self.flip = gen.fork(_RESAMPLE) if linf and channels <= 30 else None
        self.direct = channels > 30  # signs over more than 32 channels take draws of their own
        self.start = 0
        self.main: torch.Tensor | None = None  # the block's words [n, k, words] (filled by at())
        self.flips: torch.Tensor | None = None
        self.channels, self.dtype, self.side, self.shape = channels, dtype, side, shape
        self.decoded = linf and side is not None and self.flip is not None
        self.sides: list[int] = []
        # the block's decoded ℓ∞ draws (filled by _decode)
        self.pos_h: torch.Tensor | None = None
        self.pos_w: torch.Tensor | None = None
        self.signs: torch.Tensor | None = None
        self.flip_signs: torch.Tensor | None = None

    def keep(self, rows: torch.Tensor) -> None:
        self.gen = self.gen.subset(rows)
        if self.flip is not None:
            self.flip = self.flip.subset(rows)
        if self.main is not None:
            self.main = self.main[rows.to(self.main.device)]
            self.flips = self.flips[rows.to(self.flips.device)] if self.flips is not None else None
        if self.pos_h is not None:
            assert self.pos_w is not None and self.signs is not None and self.flip_signs is not None  # decoded together
            r = rows.to(self.pos_h.device)
            self.pos_h, self.pos_w, self.signs, self.flip_signs = (
                self.pos_h[r],
                self.pos_w[r],
                self.signs[r],
                self.flip_signs[r],
            )

    def at(self, it: int, end: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.direct:
            return None, None
        if self.main is None or it >= self.start + self.main.shape[1]:
            k = max(1, min(_BLOCK, end - it))
            self.start = it
            self.main = self.gen.words_block(self.words, self.base + it, k)
            self.flips = self.flip.words_block(1, it, k)[:, :, 0] if self.flip is not None else None
            if self.decoded:
                self._decode(k)
        j = it - self.start
        return self.main[:, j], (self.flips[:, j] if self.flips is not None else None)

    def _decode(self, k: int) -> None:
        """This block's ℓ∞ draws: corners ``(word · (side − s + 1)) >> 32`` (:meth:`_Draws.randint`),
        signs from the third word's bits (:meth:`_Draws.signs`), flips (:func:`_flips_from_words`)."""
        main, flips = self.main, self.flips
        assert main is not None and flips is not None  # at() drew the block; decoded implies flips
        c, dev = self.channels, main.device
        self.sides = [self.side(self.start + j) for j in range(k)]
        h, w = self.shape
        s = torch.tensor(self.sides, dtype=torch.int64, device=dev)[None, :]
        self.pos_h = (main[:, :, 0] * (h - s + 1)) >> 32
        self.pos_w = (main[:, :, 1] * (w - s + 1)) >> 32
        bit = torch.arange(c, device=dev)
        self.signs = (1 - 2 * ((main[:, :, 2, None] >> bit) & 1)).to(self.dtype)
        r = 1 + ((flips * (2**c - 1)) >> 32)
        self.flip_signs = (1 - 2 * ((r[:, :, None] >> bit) & 1)).to(self.dtype)

    def linf(self, it: int):
        """(side, corner rows [n], corner columns [n], signs [n,c,1,1], flips [n,c,1,1]) of iteration ``it``
        (after :meth:`at`)."""
        j = it - self.start
        pos_h, pos_w, signs, flip_signs = self.pos_h, self.pos_w, self.signs, self.flip_signs
        assert pos_h is not None and pos_w is not None and signs is not None and flip_signs is not None  # _decode ran
        n, c = signs.shape[0], self.channels
        return (self.sides[j], pos_h[:, j], pos_w[:, j], signs[:, j].view(n, c, 1, 1), flip_signs[:, j].view(n, c, 1, 1))
