"""CSV tables from a ScanResult (pandas): one row per sample, one row per attack × ε.

``samples.csv``: index, label, prediction, correct, margin (L(x), logits), true_class_probability
(softmax(Z)_y in [0,1]), loss (cross-entropy, nats), then one boolean column per attack and ε,
``robust.<attack>.<norm>@<eps>``, and ``robust.ensemble.<norm>@<eps>`` (worst case).

``robust_accuracy.csv``: attack, norm, eps (float, pixel scale [0,1]), eps_label (as in metric
names), metric (the gate/compare name), robust_accuracy (fraction), k and n (robust samples of
all scanned), ci95_lower / ci95_upper (its 95% Clopper–Pearson interval), success_rate,
n_attacked, mean_perturbation (‖δ‖ in the norm, pixel scale), passes (forward + backward model
passes per attacked sample), seconds; plus one ``ensemble`` row per ε with the worst case.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..metric_names import robust_acc_name
from ..results import ScanResult
from ..threat import format_eps

__all__ = ["samples_table", "robust_table", "write_csv"]


def _get(sec, name, default=None):
    if sec is None:
        return default
    return sec.get(name, default) if isinstance(sec, dict) else getattr(sec, name, default)


def samples_table(result: ScanResult) -> pd.DataFrame:
    n = result.provenance.n
    clean, margins, attacks = result.section("clean"), result.section("margins"), result.section("attacks")
    cols: dict[str, object] = {"index": range(n)}
    pred = _get(clean, "predictions")
    correct = _get(clean, "correct")
    labels = _get(clean, "labels")
    if labels is None and pred is not None and correct is not None:
        # The result stores labels only implicitly: a correct prediction is the label.
        labels = [p if c else None for p, c in zip(pred, correct)]
    if labels is not None:
        cols["label"] = pd.array(list(labels), dtype="Int64")
    if pred is not None:
        cols["prediction"] = list(pred)
    if correct is not None:
        cols["correct"] = list(correct)
    for field, col in (("margins", "margin"), ("true_class_probability", "true_class_probability"), ("loss", "loss")):
        values = _get(margins, field)
        if values is not None and len(values) == n:
            cols[col] = pd.array([float("nan") if v is None else v for v in values], dtype="float64")
    for run in _get(attacks, "runs", ()) or ():
        robust = _get(run, "robust")
        if robust is not None and len(robust) == n:
            cols[f"robust.{_get(run, 'attack')}.{_get(run, 'norm')}@{format_eps(_get(run, 'eps'))}"] = list(robust)
    norm = _get(attacks, "norm")
    for key, robust in (_get(attacks, "ensemble_robust", {}) or {}).items():
        if len(robust) == n:
            cols[f"robust.ensemble.{norm}@{key}"] = list(robust)
    return pd.DataFrame(cols)


def _interval_columns(intervals, name: str) -> dict:
    p = intervals.get(name)
    if p is None:
        return {"metric": name}
    return {"metric": name, "k": p.k, "n": p.n, "ci95_lower": p.lower, "ci95_upper": p.upper}


def robust_table(result: ScanResult) -> pd.DataFrame:
    attacks = result.section("attacks")
    intervals = result.intervals()
    rows = []
    for run in _get(attacks, "runs", ()) or ():
        fwd, bwd = _get(run, "forward_per_sample"), _get(run, "backward_per_sample")
        rows.append(
            {
                "attack": _get(run, "attack"),
                "norm": _get(run, "norm"),
                "eps": _get(run, "eps"),
                "eps_label": format_eps(_get(run, "eps")),
                **_interval_columns(intervals, robust_acc_name(_get(run, "attack"), _get(run, "norm"), _get(run, "eps"))),
                "robust_accuracy": _get(run, "robust_accuracy"),
                "success_rate": _get(run, "success_rate"),
                "n_attacked": _get(run, "n_attacked"),
                "mean_perturbation": _get(run, "mean_perturbation"),
                "passes": None if fwd is None or bwd is None else fwd + bwd,
                "seconds": _get(run, "seconds"),
            }
        )
    for eps in sorted(_get(attacks, "eps", ()) or ()):
        key = format_eps(eps)
        rows.append({"attack": "ensemble", "norm": _get(attacks, "norm"), "eps": eps, "eps_label": key,
                     **_interval_columns(intervals, robust_acc_name("ensemble", _get(attacks, "norm"), key)),
                     "robust_accuracy": (_get(attacks, "ensemble", {}) or {}).get(key)})
    columns = ["attack", "norm", "eps", "eps_label", "metric", "robust_accuracy", "k", "n", "ci95_lower", "ci95_upper",
               "success_rate", "n_attacked", "mean_perturbation", "passes", "seconds"]
    table = pd.DataFrame(rows, columns=columns)
    for col in ("n_attacked", "k", "n"):
        table[col] = table[col].astype("Int64")  # empty on the ensemble rows / without per-sample results
    return table


def write_csv(result: ScanResult, directory: str | Path) -> list[Path]:
    """Write ``samples.csv`` and ``robust_accuracy.csv`` into ``directory``; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, table in (("samples.csv", samples_table(result)), ("robust_accuracy.csv", robust_table(result))):
        path = directory / name
        table.to_csv(path, index=False)
        out.append(path)
    return out
