"""Which memory format a scan runs the model in: ``--channels-last``, ``--no-channels-last``, or
(neither flag) chosen by a measurement at the scan's start.

``torch.channels_last`` (NHWC strides) hands convolutions and pooling other kernels: the same
function up to float rounding, faster or slower depending on the model and the device (on this
project's CPU, max-pooling an NCHW tensor is ~10× slower than an NHWC one; elsewhere NCHW can
win). With neither flag robaudit **probes**: a batch of up to :data:`PROBE_ROWS` of the scan's
own samples goes through the model in both formats — a forward and a forward+backward each,
:data:`PROBE_ROUNDS` alternating rounds after one untimed round, the fastest round of each
kept — and channels_last is chosen when it is at least :data:`MIN_GAIN` faster *and* decides the
same: the same predicted class for every probe row and logits within :data:`LOGIT_RTOL` of the
default format's (relative to the largest logit). The decision, the reason and the probe's timings
are recorded in ``provenance.memory_format`` and printed in the terminal summary.

A timed choice can differ between two runs, and other kernels round differently, so it is made
only where a result is not promised to be bit-identical between runs: under ``--compute-block``
(bit-identical JSON at any batch size, shard or process count) and for ``--shard`` jobs (parts of
one result, each job would time its own machine) auto keeps the default format — force channels_last
with ``--channels-last`` there. Under ``torchrun`` rank 0 probes and every rank uses its decision.
To reproduce an auto-chosen run bit for bit, force the format it recorded.

The model is never converted in place: channels_last runs on a converted copy (``copy.deepcopy``),
so a module passed to :func:`robaudit.scan` keeps its strides; only a module that can't be copied
is converted in place when ``--channels-last`` asks for it, and the provenance and the summary say so.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import replace

import torch
from torch import nn

from .attacks.base import ChannelsLastModel, in_precision
from .results import MemoryFormat

__all__ = [
    "MemoryFormat",
    "PROBE_ROWS",
    "PROBE_ROUNDS",
    "MIN_GAIN",
    "LOGIT_RTOL",
    "choose_memory_format",
    "apply_memory_format",
]

PROBE_ROWS = 64  # rows of the probe batch (fewer if the scan has fewer samples or a smaller batch)
PROBE_ROUNDS = 3  # timed alternating rounds per format (after one untimed round each)
PROBE_PASS_BUDGET_S = 1.0  # a probe pass slower than this shrinks the probe batch (large models)
MIN_GAIN = 0.05  # channels_last must take at most 95 % of the default format's time
LOGIT_RTOL = 1e-4  # "same decisions": |Δ logit| ≤ LOGIT_RTOL · (1 + max |logit|) on every probe row


def _has_4d_weights(model: nn.Module) -> bool:
    return any(t.dim() == 4 for t in (*model.parameters(), *model.buffers()))


def _converted_copy(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # TorchScript parameters: torch's _apply reads .grad of non-leaf tensors
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf", category=UserWarning)
        return copy.deepcopy(model).to(memory_format=torch.channels_last)


def _probe_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one forward and one forward+backward (input gradient of the summed cross-entropy)
    of the batch: the two kinds of pass the attacks make."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        model(x)
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        torch.autograd.grad(nn.functional.cross_entropy(model(xr), y, reduction="sum"), xr)
    sync()
    return time.perf_counter() - t0


def choose_memory_format(
    model: nn.Module,
    x: torch.Tensor | None,
    *,
    requested: bool | None,
    compute_block: int | None,
    sharded: bool,
    fixed_batch: int | None,
    precision: str = "float32",
    device: torch.device | None = None,
    light: bool = False,
) -> tuple[MemoryFormat, nn.Module | None]:
    """The decision for ``model`` (already on its device) and, when channels_last is chosen, the
    converted copy to run (None otherwise, or when the module could not be copied: then
    :func:`apply_memory_format` converts it in place). ``x``: probe images of the scan (on the
    device; None: no samples). ``requested``: ``--channels-last`` (True), ``--no-channels-last``
    (False) or neither (None: auto). ``light``: the scan's checks cost about one pass per sample
    (clean, margins, spectra): a probe would cost more than it can save."""
    if requested is False:
        return MemoryFormat("contiguous", "--no-channels-last", "forced"), None
    if requested is True:
        try:
            return MemoryFormat("channels_last", "--channels-last", "forced"), _converted_copy(model)
        except Exception:  # noqa: BLE001 - a module deepcopy can't handle: convert it in place, and say so
            return MemoryFormat("channels_last", "--channels-last", "forced", converted_in_place=True), None
    keep = lambda reason: (MemoryFormat("contiguous", "auto", reason), None)  # noqa: E731
    if compute_block:
        return keep("--compute-block promises bit-identical results, which a timed choice can't; --channels-last forces it")
    if sharded:
        return keep("a --shard job is part of one result and would time only its own machine; --channels-last forces it")
    if fixed_batch:
        return keep("a fixed-batch export")
    if light:
        return keep("only checks of about one pass per sample: a probe would cost more than it saves")
    if x is None or x.dim() != 4 or x.shape[0] == 0 or not _has_4d_weights(model):
        return keep("no 4-d weights or image inputs: nothing to convert")
    try:
        candidate = _converted_copy(model)
    except Exception as exc:  # noqa: BLE001 - no copy, no probe: the default format, said why
        return keep(f"the module could not be copied for the probe ({type(exc).__name__})")
    try:
        return _probe(model, candidate, x, precision, device or x.device)
    except Exception as exc:  # noqa: BLE001 - a model that fails in channels_last keeps the default format
        if _is_oom(exc) and x.device.type == "cuda":
            torch.cuda.empty_cache()
        return keep(f"the probe failed in channels_last ({type(exc).__name__})")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _probe(
    model: nn.Module, candidate: nn.Module, x: torch.Tensor, precision: str, device: torch.device
) -> tuple[MemoryFormat, nn.Module | None]:
    variants = {"contiguous": model, "channels_last": ChannelsLastModel(candidate)}
    with torch.no_grad():
        logits = {k: m(x).float() for k, m in variants.items()}
    y = logits["contiguous"].argmax(1)
    same = bool(torch.equal(logits["channels_last"].argmax(1), y))
    diff = float((logits["channels_last"] - logits["contiguous"]).abs().max())
    scale = 1.0 + float(logits["contiguous"].abs().max())
    same = same and diff <= LOGIT_RTOL * scale
    timed = {k: in_precision(m, precision, device) for k, m in variants.items()}
    first = {k: _probe_seconds(m, x, y) for k, m in timed.items()}  # untimed: first-call set-up
    if max(first.values()) > PROBE_PASS_BUDGET_S and x.shape[0] > 2:  # a large model: a smaller batch
        rows = max(2, int(x.shape[0] * PROBE_PASS_BUDGET_S / max(first.values())))
        x, y = x[:rows], y[:rows]
    best = {k: float("inf") for k in timed}
    for r in range(PROBE_ROUNDS):
        for k in list(timed) if r % 2 == 0 else list(reversed(timed)):
            best[k] = min(best[k], _probe_seconds(timed[k], x, y))
    record = MemoryFormat(
        "contiguous",
        "auto",
        "",
        probe_rows=int(x.shape[0]),
        probe_seconds_contiguous=round(best["contiguous"], 6),
        probe_seconds_channels_last=round(best["channels_last"], 6),
        same_decisions=same,
        max_logit_difference=diff,
    )
    ratio = best["channels_last"] / max(best["contiguous"], 1e-12)
    timing = (
        f"a forward + a forward+backward of {x.shape[0]} rows took {best['channels_last'] * 1e3:.1f} ms in "
        f"channels_last, {best['contiguous'] * 1e3:.1f} ms contiguous ({ratio:.2f}×)"
    )
    if not same:
        return replace(
            record,
            reason=f"channels_last decided differently on the probe batch (largest logit difference {diff:.2g}); {timing}",
        ), None
    if ratio > 1 - MIN_GAIN:
        return replace(record, reason=f"channels_last not ≥ {MIN_GAIN:.0%} faster: {timing}"), None
    return replace(record, chosen="channels_last", reason=f"faster, same decisions: {timing}"), candidate


def apply_memory_format(model: nn.Module, choice: MemoryFormat, converted: nn.Module | None = None) -> nn.Module:
    """The module the scan runs: ``model`` itself (contiguous), or the channels_last copy
    ``converted`` (made here if not given), or ``model`` converted in place where the choice says
    so (a module that can't be copied)."""
    if not choice.channels_last:
        return model
    if converted is None:
        converted = model.to(memory_format=torch.channels_last) if choice.converted_in_place else _converted_copy(model)
    return converted
