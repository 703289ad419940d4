"""CSV tables from a ScanResult (pandas): one row per sample, one row per attack × ε.

``samples.csv``: index, label, prediction, correct, margin (L(x), logits), true_class_probability
(softmax(Z)_y in [0,1]), loss (cross-entropy, nats), then one boolean column per attack and ε,
``robust.<attack>.<norm>@<eps>``, and ``robust.ensemble.<norm>@<eps>`` (worst case).

``robust_accuracy.csv``: attack, norm, eps (float, pixel scale [0,1]), eps_label (as in metric
names), robust_accuracy and success_rate (fractions), n_attacked, mean_perturbation (‖δ‖ in the
norm, pixel scale), passes (forward + backward model passes per attacked sample), seconds; plus one
``ensemble`` row per ε with the worst-case robust accuracy.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..outputs import atomic_write
from ..results import ScanResult
from ..threat import format_eps

__all__ = ["samples_table", "robust_table", "write_csv", "CSV_FILES"]

CSV_FILES = ("samples.csv", "robust_accuracy.csv")  # what write_csv writes into its folder


def _get(sec, name, default=None):
    if sec is None:
        return default
    return sec.get(name, default) if isinstance(sec, dict) else getattr(sec, name, default)


def samples_table(result: ScanResult) -> pd.DataFrame:
    n = result.provenance.n
    clean, margins, attacks = result.section("clean"), result.section("margins"), result.section("attacks")
    cols: dict[str, object] = {}
    pred = _get(clean, "predictions")
    correct = _get(clean, "correct")
    labels = _get(clean, "labels")
    if labels is None and pred is not None and correct is not None:
        # The result stores labels only implicitly: a correct prediction is the label.
        labels = [p if c else None for p, c in zip(pred, correct)]
    # a per-sample column goes in only when it has one value per sample (a result read from a file may not)
    if labels is not None and len(labels) == n:
        cols["label"] = pd.array(list(labels), dtype="Int64")
    if pred is not None and len(pred) == n:
        cols["prediction"] = list(pred)
    if correct is not None and len(correct) == n:
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
    # one row per sample, when the result holds per-sample values for its n samples
    return pd.DataFrame({"index": range(n if cols else 0), **cols})


def robust_table(result: ScanResult) -> pd.DataFrame:
    attacks = result.section("attacks")
    rows = []
    for run in _get(attacks, "runs", ()) or ():
        fwd, bwd = _get(run, "forward_per_sample"), _get(run, "backward_per_sample")
        rows.append(
            {
                "attack": _get(run, "attack"),
                "norm": _get(run, "norm"),
                "eps": _get(run, "eps"),
                "eps_label": format_eps(_get(run, "eps")),
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
                     "robust_accuracy": (_get(attacks, "ensemble", {}) or {}).get(key)})
    columns = ["attack", "norm", "eps", "eps_label", "robust_accuracy", "success_rate", "n_attacked",
               "mean_perturbation", "passes", "seconds"]
    table = pd.DataFrame(rows, columns=columns)
    table["n_attacked"] = table["n_attacked"].astype("Int64")  # empty on the ensemble rows
    return table


def write_csv(result: ScanResult, directory: str | Path) -> list[Path]:
    """Write ``samples.csv`` and ``robust_accuracy.csv`` into ``directory``; return their paths."""
    directory = Path(directory)
    out = []
    for name, table in zip(CSV_FILES, (samples_table(result), robust_table(result))):
        path = directory / name
        atomic_write(path, table.to_csv(index=False))
        out.append(path)
    return out
