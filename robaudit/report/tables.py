"""Tables from a ScanResult (pandas): one row per sample, per class, per attack × ε.

``samples_table`` (``ScanResult.samples()``, ``samples.csv``): one row per scanned sample, in
dataset order. ``index`` (position in the dataset), ``label``, ``prediction``, ``correct``;
``margin`` L(x) = Z_y − max_{i≠y} Z_i (logits), ``true_class_probability`` (softmax(Z)_y in
[0,1]), ``loss`` (cross-entropy, nats); one boolean column per attack and ε,
``robust.<attack>.<norm>@<eps>``, and ``robust.ensemble.<norm>@<eps>`` (worst case); with the
geometry checks that ran: with ``certify``, per ε ``certified.<method>.<norm>@<eps>`` (bool),
``certified_lower.<method>.<norm>@<eps>`` (the lower bound of the smallest margin z_y − z_j over
the threat set, logits; NaN where misclassified), ``certify_status.<method>.<norm>@<eps>``
(certified, unknown, incorrect, broken, falsified, timeout, undecided, skipped) and ``certify.radius``
(largest certified ε, pixel scale); ``minimal.radius`` / ``minimal.deepfool_radius`` (attack-found minimal
perturbation, threat norm, pixel scale; NaN where none was found, 0 where misclassified),
``jacobian.<margin|ce>.<l1|l2|linf|zero_fraction>`` (norms of ∂L/∂x in logits per pixel unit and
of ∇ℓ in nats per pixel unit), and on the samples the curvature/indicator checks used (NaN
elsewhere) ``curvature.*`` (loss, ‖∇ℓ‖₂, Hessian λ_max/λ_min, ‖H‖_F, ‖Hz‖) and ``indicator.*``
(Eq. 9 radii ``radius_*``, Theorem-1 bounds, the attack-found ``attack_radius_*``).

``per_class_table`` (``ScanResult.per_class()``, ``per_class.csv``): one row per class: ``n``,
``clean_accuracy``, robust accuracy per attack and ε and certified accuracy per ε (fractions of
the class's samples),
``margin_mean``, ``minimal.radius_median`` and ``jacobian.margin.l1_mean`` where those ran.

``robust_accuracy.csv``: attack, norm, eps (float, pixel scale [0,1]), eps_label (as in metric
names), metric (the gate/compare name), robust_accuracy (fraction), k and n (robust samples of
all scanned), ci95_lower / ci95_upper (its 95% Clopper–Pearson interval), success_rate,
n_attacked, mean_perturbation (‖δ‖ in the norm, pixel scale), passes (forward + backward model
passes per attacked sample), seconds; plus one ``ensemble`` row per ε with the worst case.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..metric_names import robust_acc_name
from ..outputs import atomic_write_all
from ..results import ScanResult
from ..threat import format_eps

__all__ = ["samples_table", "per_class_table", "robust_table", "csv_texts", "write_csv", "CSV_FILES"]

CSV_FILES = ("samples.csv", "robust_accuracy.csv", "per_class.csv")  # what write_csv may write into its folder

# section -> (field, column): one value per scanned sample, dataset order
_PER_SAMPLE = {
    "margins": (("margins", "margin"), ("true_class_probability", "true_class_probability"), ("loss", "loss")),
    "minimal": (("radii", "minimal.radius"), ("deepfool_radii", "minimal.deepfool_radius")),
}
_JACOBIAN_STATS = ("l1", "l2", "linf", "zero_fraction")
# section -> dotted fields with one value per sample in the section's ``indices`` (a subset)
_PER_SUBSET = {
    "curvature": (
        "loss_values",
        "grad_norm",
        "frobenius_exact",
        "frobenius_fd",
        "hz_exact",
        "hz_fd",
        "cure_step",
        "exact.lambda_max",
        "exact.lambda_min",
        "exact.alignment",
        "finite_difference.lambda_max",
        "finite_difference.lambda_min",
    ),
    "indicator": (
        "margin",
        "j_l1",
        "j_l2",
        "lambda_abs_max",
        "radius_linf",
        "radius_l2",
        "radii_linf",
        "radii_l2",
        "t",
        "theorem1.exact.lower",
        "theorem1.exact.upper",
        "theorem1.finite_difference.lower",
        "theorem1.finite_difference.upper",
    ),
}

_RENAMED = {"loss_values": "loss", "radii_linf": "attack_radius_linf", "radii_l2": "attack_radius_l2"}


def _get(sec, name, default=None):
    if sec is None:
        return default
    return sec.get(name, default) if isinstance(sec, dict) else getattr(sec, name, default)


def _dotted(sec, path: str):
    for part in path.split("."):
        sec = _get(sec, part)
        if sec is None:
            return None
    return sec


def _floats(values) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def samples_table(result: ScanResult) -> pd.DataFrame:
    """One row per scanned sample with every per-sample value the result's sections hold (module docstring)."""
    n = result.provenance.n
    clean, attacks = result.section("clean"), result.section("attacks")
    cols: dict[str, object] = {"index": range(n)}
    pred = _get(clean, "predictions")
    correct = _get(clean, "correct")
    labels = _get(clean, "labels") or None
    if labels is None and pred is not None and correct is not None:
        # results written before labels were stored: a correct prediction is the label
        labels = [p if c else None for p, c in zip(pred, correct)]
    # a per-sample column goes in only when it has one value per sample (a result read from a file may not)
    if labels is not None and len(labels) == n:
        cols["label"] = pd.array(list(labels), dtype="Int64")
    if pred is not None and len(pred) == n:
        cols["prediction"] = list(pred)
    if correct is not None and len(correct) == n:
        cols["correct"] = list(correct)
    for name, fields in _PER_SAMPLE.items():
        sec = result.section(name)
        for field, col in fields:
            values = _get(sec, field)
            if values is not None and len(values) == n:
                cols[col] = _floats(values)
    for run in _get(attacks, "runs", ()) or ():
        robust = _get(run, "robust")
        if robust is not None and len(robust) == n:
            cols[f"robust.{_get(run, 'attack')}.{_get(run, 'norm')}@{format_eps(_get(run, 'eps'))}"] = list(robust)
    norm = _get(attacks, "norm")
    for key, robust in (_get(attacks, "ensemble_robust", {}) or {}).items():
        if len(robust) == n:
            cols[f"robust.ensemble.{norm}@{key}"] = list(robust)
    certify = result.section("certify")
    for run in _get(certify, "runs", ()) or ():
        name = f"{_get(certify, 'method')}.{_get(certify, 'norm')}@{format_eps(_get(run, 'eps'))}"
        for field, prefix, convert in (
            ("certified", "certified", list),
            ("lower", "certified_lower", _floats),
            ("status", "certify_status", list),
        ):
            values = _get(run, field)
            if values is not None and len(values) == n:
                cols[f"{prefix}.{name}"] = convert(values)
    radius = _get(certify, "radius")
    if radius and len(radius) == n:
        cols["certify.radius"] = _floats(radius)
    jacobian = result.section("jacobian")
    for function in ("margin", "ce"):
        for stat in _JACOBIAN_STATS:
            values = _dotted(jacobian, f"{function}.{stat}")
            if values is not None and len(values) == n:
                cols[f"jacobian.{function}.{stat}"] = _floats(values)
    for name, subset_fields in _PER_SUBSET.items():
        sec = result.section(name)
        indices = _get(sec, "indices")
        if not indices or any(not 0 <= int(i) < n for i in indices):
            continue
        for field in subset_fields:
            values = _dotted(sec, field)
            if values is None or len(values) != len(indices):
                continue
            column = np.full(n, math.nan)
            column[np.asarray(indices, dtype=np.int64)] = _floats(values)
            cols[f"{name}.{_RENAMED.get(field, field)}"] = column
    return pd.DataFrame(cols)


def per_class_table(result: ScanResult) -> pd.DataFrame:
    """One row per class (``class`` index, ``name``): sample count, clean and robust accuracy, and the
    class means/medians of the per-sample geometry columns (module docstring). Needs labels in the result."""
    samples = samples_table(result)
    if "label" not in samples or samples["label"].isna().any():
        from ..errors import InputError

        raise InputError(
            "this result has no labels for misclassified samples (written before robaudit stored them); re-run the scan"
        )
    names = result.provenance.class_names
    classes = pd.DataFrame({"class": range(len(names)), "name": list(names)}).set_index("class")
    by_class = samples.assign(label=samples["label"].astype("int64")).groupby("label")
    table = classes.assign(n=by_class.size()).fillna({"n": 0})
    table["n"] = table["n"].astype("int64")
    if "correct" in samples:
        table["clean_accuracy"] = by_class["correct"].mean()
    for col in [c for c in samples.columns if c.startswith(("robust.", "certified."))]:
        table[col] = by_class[col].mean()
    summaries = (("margin", "mean"), ("minimal.radius", "median"), ("jacobian.margin.l1", "mean"))
    for col, how in summaries:
        if col in samples:
            table[f"{col}_{how}"] = getattr(by_class[col], how)()
    return table.reset_index()


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
        rows.append(
            {
                "attack": "ensemble",
                "norm": _get(attacks, "norm"),
                "eps": eps,
                "eps_label": key,
                **_interval_columns(intervals, robust_acc_name("ensemble", _get(attacks, "norm"), key)),
                "robust_accuracy": (_get(attacks, "ensemble", {}) or {}).get(key),
            }
        )
    columns = [
        "attack",
        "norm",
        "eps",
        "eps_label",
        "metric",
        "robust_accuracy",
        "k",
        "n",
        "ci95_lower",
        "ci95_upper",
        "success_rate",
        "n_attacked",
        "mean_perturbation",
        "passes",
        "seconds",
    ]
    table = pd.DataFrame(rows, columns=columns)
    for col in ("n_attacked", "k", "n"):
        table[col] = table[col].astype("Int64")  # empty on the ensemble rows / without per-sample results
    return table


def csv_texts(result: ScanResult) -> dict[str, str]:
    """``samples.csv``, ``robust_accuracy.csv`` and (when the result has labels) ``per_class.csv``:
    file name → CSV text."""
    tables = {"samples.csv": samples_table(result), "robust_accuracy.csv": robust_table(result)}
    if _get(result.section("clean"), "labels"):
        tables["per_class.csv"] = per_class_table(result)
    return {name: table.to_csv(index=False) for name, table in tables.items()}


def write_csv(result: ScanResult, directory: str | Path) -> list[Path]:
    """Write :func:`csv_texts` into ``directory`` (all or none: robaudit.outputs); return their paths."""
    files: dict[str | os.PathLike[str], str | bytes] = {
        Path(directory) / name: text for name, text in csv_texts(result).items()
    }
    atomic_write_all(files)
    return [Path(p) for p in files]
