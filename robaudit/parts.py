"""Per-sample parts: how a scan is split over batches, shards and processes and put back together.

Every check computes a :class:`Part` for the samples a process owns: *tables* of per-sample
records keyed by global scan position (0..n−1, the dataset order of the scanned samples) and an
*extra* dict for what is not per sample (candidates for a selection, pass counts, a model-level
section computed once). A section is then built by the check's ``combine`` from the **merged**
tables — every part's rows sorted by position — and the list of every part's extra. Aggregates
(means, quantiles, Spearman ρ, robust accuracies) are recomputed from the merged records, never
averaged from per-part averages, so one process, N processes (``torchrun``) and N shards merged by
``robaudit merge`` give the same section as long as each sample's records are the same.

Values are JSON-native (ints, floats, bools, strings, None, lists) so that a part written to a
file and read back merges exactly as the in-memory one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import InputError

__all__ = [
    "Part",
    "Table",
    "Tables",
    "CombineInfo",
    "merge_parts",
    "to_list",
    "PART_FORMAT",
]

PART_FORMAT = 1


def to_list(values: Any) -> list:
    """A tensor / sequence as a JSON-native list (floats stay full precision; bools, ints kept)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype == torch.bool:
            return [bool(v) for v in values.tolist()]
        if values.is_floating_point():
            return [float(v) for v in values.double().tolist()]
        return [int(v) for v in values.tolist()]
    return list(values)


@dataclass
class Part:
    """One process's contribution to one check: ``tables`` name → {"positions": [...], column:
    [...]} (columns aligned with positions) and ``extra`` (anything JSON-native)."""

    tables: dict[str, dict[str, list]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def add(self, table: str, positions: Any, **columns: Any) -> None:
        """Append rows to ``table`` (creating it). Every column must have one value per position."""
        pos = to_list(positions)
        cols = {k: to_list(v) for k, v in columns.items()}
        for k, v in cols.items():
            if len(v) != len(pos):
                raise ValueError(f"{table}.{k}: {len(v)} values for {len(pos)} positions")
        t = self.tables.setdefault(table, {"positions": []})
        if len(t) > 1 and set(t) - {"positions"} != set(cols):
            raise ValueError(f"{table}: columns {sorted(cols)} differ from {sorted(set(t) - {'positions'})}")
        t["positions"] += pos
        for k, v in cols.items():
            t.setdefault(k, []).extend(v)

    def table(self, name: str) -> Table:
        return Table(self.tables.get(name, {"positions": []}))

    def to_dict(self) -> dict:
        return {"tables": self.tables, "extra": self.extra}

    @classmethod
    def from_dict(cls, data: dict) -> Part:
        if not isinstance(data, dict) or not isinstance(data.get("tables", {}), dict):
            raise InputError("a part's check entry is not a {tables, extra} object")
        return cls(tables=dict(data.get("tables", {})), extra=dict(data.get("extra", {})))


class Table:
    """Rows of one table: ``positions`` and columns; lookups by position."""

    def __init__(self, data: dict[str, list]) -> None:
        self.data = data
        self.positions: list[int] = data.get("positions", [])
        self._row: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def __contains__(self, position: int) -> bool:
        return int(position) in self.row_of

    @property
    def row_of(self) -> dict[int, int]:
        if self._row is None:
            self._row = {p: i for i, p in enumerate(self.positions)}
        return self._row

    def col(self, name: str) -> list:
        return self.data[name]

    def has(self, name: str) -> bool:
        return name in self.data

    def tensor(self, name: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """A column as a tensor (None → NaN for floats)."""
        values = self.data[name]
        if dtype.is_floating_point:
            return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=dtype)
        return torch.tensor(values, dtype=dtype)

    def at(self, name: str, positions: Iterable[int]) -> list:
        """Column ``name`` at ``positions`` (each must be in the table)."""
        col, row = self.data[name], self.row_of
        return [col[row[int(p)]] for p in positions]

    @property
    def pos_tensor(self) -> torch.Tensor:
        return torch.tensor(self.positions, dtype=torch.long)


class Tables(dict):
    """Merged tables of one check: name → :class:`Table` (an absent table reads as empty)."""

    def __missing__(self, key: str) -> Table:
        return Table({"positions": []})


def merge_parts(parts: Sequence[Part], check: str) -> tuple[Tables, list[dict]]:
    """(merged tables, every part's extra in part order). Rows are sorted by position; a position
    in two parts is an error (the parts overlap)."""
    merged = Tables()
    names: list[str] = []
    for p in parts:
        names += [n for n in p.tables if n not in names]
    for name in names:
        cols: dict[str, list] = {}
        positions: list[int] = []
        for p in parts:
            t = p.tables.get(name)
            if not t:
                continue
            positions += t["positions"]
            for k, v in t.items():
                if k != "positions":
                    cols.setdefault(k, []).extend(v)
        order = sorted(range(len(positions)), key=positions.__getitem__)
        pos_sorted = [positions[i] for i in order]
        dup = next((a for a, b in zip(pos_sorted, pos_sorted[1:]) if a == b), None)
        if dup is not None:
            raise InputError(f"{check}: sample {dup} appears in two parts (the shards overlap)")
        data = {"positions": pos_sorted}
        for k, v in cols.items():
            if len(v) != len(positions):
                raise InputError(f"{check}.{name}: column {k!r} has {len(v)} values for {len(positions)} samples")
            data[k] = [v[i] for i in order]
        merged[name] = Table(data)
    return merged, [p.extra for p in parts]


@dataclass
class CombineInfo:
    """What a check's ``combine`` may use besides its own tables: the scan's size, classes and
    settings, the merged tables and combined sections of the checks before it, and the flag list
    to extend. Built from the parts alone (``robaudit merge`` has no model and no data)."""

    n: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    eps: tuple[float, ...]
    config: Any  # ScanConfig
    sections: dict = field(default_factory=dict)
    tables: dict[str, Tables] = field(default_factory=dict)
    flags: list = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def clean(self) -> Table:
        """The merged ``clean`` table (label, prediction, correct, margin for every sample)."""
        return self.tables["clean"]["samples"]


# --- candidates: selections over all samples, computed locally, reduced at combine ---------------


def lowest(candidates: Iterable[dict], count: int, key: str = "margin") -> list[dict]:
    """The ``count`` candidates with the smallest ``key`` (ties: lower position first)."""
    return sorted(candidates, key=lambda c: (c[key], c["position"]))[: max(0, int(count))]


def first_correct(clean: Table, k: int) -> list[int]:
    """Positions of the first ``k`` clean-correct samples in scan order."""
    out = [p for p, ok in zip(clean.positions, clean.col("correct")) if ok]
    return out[: max(0, int(k))]


def digest(values: Any) -> str:
    """sha256 of a JSON-native value (canonical JSON)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
