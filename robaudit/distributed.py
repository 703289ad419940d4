"""Scans split over processes: ``--shard K/N`` part files + ``robaudit merge``, and ``torchrun``.

Every process scans its shard of the samples (positions p with p % N == K, :class:`Shard`) and
produces a *payload*: every check's :class:`~robaudit.parts.Part` plus what ``combine`` needs
(the run's settings, the data's size and classes, provenance). A ``--shard`` job writes it as a
JSON part file; ``robaudit merge`` reads N of them, refuses parts of different runs, and combines
(:func:`merge_payloads`); under ``torchrun`` rank 0 gathers the payloads with
``torch.distributed.gather_object`` and combines them the same way (:mod:`robaudit.torchrun`; the
process group itself: :mod:`robaudit.process_group`). Model-level checks (spectra,
landscape, the training-set margins) compute once, in shard 0 / rank 0.

Since each sample's records don't depend on where it was computed (per-sample random streams,
:mod:`robaudit.rng`) and each section is recomputed from the merged records, the result equals
the single-process one (bit for bit with ``--compute-block``; ``timings``, ``command_line`` and
``execution`` aside).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .config import AttackSpec, ScanConfig
from .context import progress_bars
from .data.spec import DataSpec
from .engine import (
    Shard,
    build_checks,
    combine_parts,
    compute_parts,
    is_legacy,
    make_context,
    provenance,
)
from .errors import InputError, UsageError
from .jsonio import read_json
from .models.spec import LoadedModel
from .parts import PART_FORMAT, CombineInfo, Part, digest
from .process_group import (
    error_payload,
    raise_first_error,
    start_process_group,
    stop_process_group,
    torchrun_env,
    wait_for_all_ranks,
)
from .results import Provenance, ScanResult, from_jsonable, to_jsonable
from .threat import Norm

__all__ = [
    "parse_shard",
    "run_shard",
    "write_part",
    "read_part",
    "merge_payloads",
    "merge_part_files",
    "torchrun_env",
    "start_process_group",
    "wait_for_all_ranks",
    "stop_process_group",
    "error_payload",
    "raise_first_error",
]


# --- settings ----------------------------------------------------------------------------------


def parse_shard(text: str | None) -> Shard | None:
    """``K/N`` (0 ≤ K < N) → Shard; UsageError otherwise."""
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must be K/N with 0 <= K < N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= k < n):
        raise UsageError(f"--shard must be K/N with 0 <= K < N (e.g. 0/4), got {text!r}")
    return Shard(k, n)


def config_to_dict(config: ScanConfig) -> dict:
    return {
        "norm": config.norm.value,
        "eps": list(config.eps),
        "attacks": [[a.name, [list(p) for p in a.params]] for a in config.attacks],
        "checks": list(config.checks),
        "check_options": [[name, [list(p) for p in params]] for name, params in config.check_options],
        "ensemble": config.ensemble,
        "seed": config.seed,
        "device": config.device,
        "batch_size": config.batch_size,
        "keep_examples": config.keep_examples,
        "preset": config.preset,
        "compute_block": config.compute_block,
        "workers": config.workers,
        "precision": config.precision,
        "channels_last": config.channels_last,
    }


def config_from_dict(d: dict) -> ScanConfig:
    return ScanConfig(
        norm=Norm.parse(d["norm"]),
        eps=tuple(float(e) for e in d["eps"]),
        attacks=tuple(AttackSpec(name, tuple((k, v) for k, v in params)) for name, params in d["attacks"]),
        checks=tuple(d["checks"]),
        check_options=tuple((name, tuple((k, v) for k, v in params)) for name, params in d["check_options"]),
        ensemble=d["ensemble"],
        seed=int(d["seed"]),
        device=d["device"],
        batch_size=int(d["batch_size"]),
        keep_examples=int(d["keep_examples"]),
        preset=d["preset"],
        compute_block=d["compute_block"],
        workers=d["workers"],
        precision=d.get("precision", "float32"),
        channels_last=None if d.get("channels_last", False) is None else bool(d.get("channels_last", False)),
    )


# Settings that don't change a result: how fast it ran, on which device index, with how many workers.
_NOT_IN_FINGERPRINT = ("batch_size", "device", "workers")


def _fingerprint(prov: Provenance, config: ScanConfig, data: DataSpec, eps: tuple[float, ...], device: torch.device) -> dict:
    """What two parts of one run must share (merge refuses parts whose fingerprints differ)."""
    settings = {k: v for k, v in config_to_dict(config).items() if k not in _NOT_IN_FINGERPRINT}
    return {
        "checkpoint sha256": prov.checkpoint_sha256,
        "dataset": f"{prov.dataset} ({prov.split})",
        "n": prov.n,
        "sample": prov.sample,
        "sample indices (sha256)": digest(list(prov.indices))[:16],
        "labels (sha256)": digest(data.y.tolist())[:16],
        "class names (sha256)": digest(list(data.class_names))[:16],
        "input shape": list(data.input_shape),
        "eps": list(eps),
        **settings,
        "robaudit version": __version__,
        "torch version": torch.__version__,
        "device type": device.type,
    }


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- one shard ---------------------------------------------------------------------------------


def _refuse_run_only_checks(checks) -> None:
    legacy = [c.name for c in checks if is_legacy(c)]
    if legacy:
        raise UsageError(
            f"check(s) {', '.join(legacy)} implement only run(ctx), which needs every sample in one process; "
            f"run them in a single-process scan, or give them compute/combine (docs/plugins.md)"
        )


def run_shard(
    loaded: LoadedModel,
    data: DataSpec,
    config: ScanConfig,
    shard: Shard,
    *,
    device: torch.device | None = None,
    quiet: bool = True,
    command_line: str | None = None,
    log: Callable[[str], None] | None = None,
    train_data: DataSpec | None = None,
    label: str = "",
    memory=None,
) -> dict:
    """Compute every check's part for ``shard`` of the samples: the payload of a part file.
    ``memory``: the memory format decided for every rank (torchrun), else decided here."""
    checks = build_checks(config)
    _refuse_run_only_checks(checks)
    ctx = make_context(loaded, data, config, device=device, train_data=train_data, shard=shard, memory=memory)
    torch.manual_seed(config.seed)
    with progress_bars(quiet) as progress:
        ctx.progress = _Labelled(progress, label) if label else progress
        timings = compute_parts(ctx, checks, log)
    prov = provenance(loaded, data, config, ctx.device.type, command_line, memory_format=ctx.memory_format)
    return {
        "robaudit_part": PART_FORMAT,
        "shard": [shard.index, shard.count],
        "run": _fingerprint(prov, config, data, ctx.eps, ctx.device),
        "header": {
            "n": data.n,
            "class_names": list(data.class_names),
            "input_shape": list(data.input_shape),
            "eps": list(ctx.eps),
            "config": config_to_dict(config),
        },
        "provenance": to_jsonable(prov),
        "model_warnings": list(loaded.info.warnings),
        "checks": [c.name for c in checks],
        "parts": {name: part.to_dict() for name, part in ctx.parts.items()},
        "timings": timings,
        "passes": ctx.passes,
    }


class _Labelled:
    """A progress display whose task descriptions carry a prefix (e.g. the rank)."""

    def __init__(self, progress, label: str) -> None:
        self._p, self._label = progress, label

    def add_task(self, description="", *a, **k):
        return self._p.add_task(f"{self._label} {description}", *a, **k)

    def __getattr__(self, name):
        return getattr(self._p, name)


def write_part(path: str | Path, payload: dict) -> None:
    """Write a part file atomically (robaudit.outputs: the previous file or the complete new one)."""
    from .outputs import atomic_write

    atomic_write(path, json.dumps(payload, allow_nan=True))


def read_part(path: str | Path) -> dict:
    """A part file's payload; InputError (exit 3) when it is not one."""
    data = read_json(path, "robaudit part file")
    if not isinstance(data, dict) or "robaudit_part" not in data:
        raise InputError(f"{path} is not a robaudit part file (write one with robaudit scan --shard K/N --json FILE)")
    if data["robaudit_part"] != PART_FORMAT:
        raise InputError(
            f"{path} is a part file of format {data['robaudit_part']!r}; this robaudit reads format {PART_FORMAT}"
        )
    missing = [k for k in ("shard", "run", "header", "provenance", "checks", "parts") if k not in data]
    if missing:
        raise InputError(f"{path} is not a complete part file (missing {', '.join(missing)})")
    shard = data["shard"]
    if not (
        isinstance(shard, list) and len(shard) == 2 and all(isinstance(v, int) for v in shard) and 0 <= shard[0] < shard[1]
    ):
        raise InputError(f"{path}: its shard {shard!r} is not [K, N] with 0 <= K < N")
    if not all(isinstance(data[k], dict) for k in ("run", "header", "provenance", "parts")):
        raise InputError(f"{path} is not a valid part file (run, header, provenance and parts must be objects)")
    return data


# --- merging -------------------------------------------------------------------------------------


def merge_payloads(payloads: Sequence[dict], names: Sequence[str], execution: str) -> ScanResult:
    """One ScanResult from the payloads of every shard of one run (``names`` label them in errors)."""
    if not payloads:
        raise UsageError("no parts to merge")
    first, first_name = payloads[0], names[0]
    for p, name in zip(payloads[1:], names[1:]):
        for key, value in first["run"].items():
            if p["run"].get(key) != value:
                raise UsageError(
                    f"{name} is from a different run than {first_name}: {key} is {_short(p['run'].get(key))} "
                    f"there, {_short(value)} in {first_name}; merge the parts of one scan only"
                )
    count = first["shard"][1]
    seen: dict[int, str] = {}
    for p, name in zip(payloads, names):
        k, n = p["shard"]
        if n != count:
            raise UsageError(f"{name} is shard {k}/{n} but {first_name} is one of {count} shards")
        if k in seen:
            raise UsageError(f"{name} and {seen[k]} are both shard {k}/{count}")
        seen[k] = name
    missing = [str(k) for k in range(count) if k not in seen]
    if missing:
        raise UsageError(f"shard(s) {', '.join(missing)} of {count} missing; merge all {count} parts of the scan")
    ordered = sorted(zip(payloads, names), key=lambda pn: pn[0]["shard"][0])
    payloads, names = [p for p, _ in ordered], [n for _, n in ordered]
    header = payloads[0]["header"]
    try:
        config = config_from_dict(header["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{names[0]}: its settings can't be read ({type(exc).__name__}: {exc})") from None
    checks = build_checks(config)
    _refuse_run_only_checks(checks)
    _check_records(payloads, names, header.get("n"))
    try:
        parts = {c.name: [Part.from_dict(p["parts"][c.name]) for p in payloads] for c in checks}
        info = CombineInfo(
            n=int(header["n"]),
            class_names=tuple(header["class_names"]),
            input_shape=tuple(header["input_shape"]),
            eps=tuple(header["eps"]),
            config=config,
        )
        combine_parts(checks, parts, info)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise InputError(f"the parts can't be combined ({type(exc).__name__}: {exc}); are they complete part files?") from None
    clean = info.tables["clean"]["samples"]
    if clean.positions != list(range(info.n)):
        raise InputError(f"the parts cover {len(clean.positions)} of the scan's {info.n} samples")
    _check_labels(clean, payloads[0]["run"])
    try:
        prov = from_jsonable(Provenance, payloads[0]["provenance"])
        timings = {c.name: max(float(p.get("timings", {}).get(c.name, 0.0)) for p in payloads) for c in checks}
        passes = {c.name: {kind: sum(_count(p, c.name, kind) for p in payloads) for kind in ("grad", "hvp")} for c in checks}
        result = ScanResult(
            provenance=replace(prov, execution=execution),
            sections=dict(info.sections),
            flags=tuple(info.flags),
            model_warnings=tuple(payloads[0].get("model_warnings", ())),
            timings=timings,
            passes=passes,
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the parts can't be combined ({type(exc).__name__}: {exc}); are they complete part files?") from None
    _check_as_a_result_file(result)
    return result


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    return "text" if isinstance(value, str) else "list/object"


def _check_records(payloads: Sequence[dict], names: Sequence[str], n: Any) -> None:
    """Per-sample consistency of the parts' tables before they are combined (exit 3, naming the
    part, check, table and column): every position an integer in [0, n) that belongs to the
    part's shard (p mod N = K), every column as long as its positions and of one kind across all
    parts — numbers, true/false, text or lists (null, a missing value, with any but true/false) —
    so a tampered or damaged part never becomes a result that merely looks plausible."""
    if type(n) is not int or n < 0:
        raise InputError(f"{names[0]}: its header's sample count {_short(n)} is not a count")
    kinds: dict[tuple[str, str, str], tuple[set, str]] = {}
    for payload, name in zip(payloads, names):
        k, count = payload["shard"]
        for check, part in payload["parts"].items():
            tables = part.get("tables", {}) if isinstance(part, dict) else None
            if not isinstance(tables, dict):
                raise InputError(f"{name}: {check} has no tables object; is it a complete part file?")
            for table, columns in tables.items():
                where = f"{name}: {check}.{table}"
                positions = columns.get("positions") if isinstance(columns, dict) else None
                if not isinstance(positions, list):
                    raise InputError(f"{where} has no list of positions")
                bad = next((p for p in positions if type(p) is not int or not 0 <= p < n or p % count != k), None)
                if bad is not None:
                    raise InputError(
                        f"{where}: position {_short(bad)} is not one of shard {k}/{count}'s samples "
                        f"(p mod {count} = {k}, p < {n}); the part is damaged or from another run"
                    )
                for column, values in columns.items():
                    if column == "positions":
                        continue
                    if not isinstance(values, list) or len(values) != len(positions):
                        got = len(values) if isinstance(values, list) else _kind(values)
                        raise InputError(f"{where}.{column} has {got} values for {len(positions)} samples")
                    seen, first = kinds.setdefault((check, table, column), (set(), name))
                    seen.update(_kind(v) for v in values)
                    kinds_seen = seen - {"null"}
                    if len(kinds_seen) > 1 or seen == {"true/false", "null"}:
                        raise InputError(
                            f"{where}.{column} holds {' and '.join(sorted(seen))} values (with {first}); "
                            f"a column holds one kind: the part is damaged or from another robaudit"
                        )


def _check_labels(clean: Any, run: dict) -> None:
    """The merged clean records against the run's own fingerprint: the labels in scan order hash to
    the run's ``labels (sha256)``, and ``correct`` is ``prediction == label`` for every sample."""
    labels, predictions, correct = clean.col("label"), clean.col("prediction"), clean.col("correct")
    expected = run.get("labels (sha256)")
    if expected is not None and digest(labels)[:16] != expected:
        raise InputError(
            f"the parts' per-sample labels do not hash to their run's labels (sha256 {expected}); "
            f"a part is damaged or was edited"
        )
    wrong = next((i for i, (y, p, c) in enumerate(zip(labels, predictions, correct)) if (y == p) != c), None)
    if wrong is not None:
        raise InputError(
            f"sample {wrong}: the parts say correct={correct[wrong]} for prediction {predictions[wrong]} and "
            f"label {labels[wrong]}; a part is damaged or was edited"
        )


def _check_as_a_result_file(result: ScanResult) -> None:
    """The merged result must read back as its JSON file would (``ScanResult.read_json``: types,
    per-sample and per-class lengths, sample indices, encoded images): parts whose records
    disagree are refused here, before ``merge`` or rank 0 writes any file (exit 3)."""
    from .jsonio import parse_json

    try:
        ScanResult.from_dict(parse_json(result.to_json(indent=None), "the merged result"))
    except InputError as exc:
        raise InputError(f"the parts' records are inconsistent: the merged result would be invalid ({exc})") from None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a section's own checks
        raise InputError(
            f"the parts' records are inconsistent: the merged result would be invalid ({type(exc).__name__}: {exc})"
        ) from None


def _count(payload: dict, check: str, kind: str) -> int:
    """A part's count of ``kind`` passes for ``check`` (0 where a part has none: older parts)."""
    value = payload.get("passes", {})
    value = value.get(check, {}) if isinstance(value, dict) else {}
    value = value.get(kind, 0) if isinstance(value, dict) else 0
    return value if type(value) is int and value >= 0 else 0


def merge_part_files(paths: Sequence[str | Path]) -> ScanResult:
    payloads = [read_part(p) for p in paths]
    return merge_payloads(payloads, [str(p) for p in paths], f"merged from {len(payloads)} shards")
