"""Clopper–Pearson intervals and the exact McNemar test against scipy and textbook values."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from robaudit.stats import clopper_pearson, mcnemar_exact, paired_test, proportion


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (0, 10), (3, 60), (54, 60), (60, 60), (7, 13), (250, 500), (1, 1000)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = clopper_pearson(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


def test_clopper_pearson_textbook_values():
    # k = 0: upper = 1 − (α/2)^(1/n); k = n: lower = (α/2)^(1/n) (closed forms of the Beta quantiles)
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-12))
    assert clopper_pearson(10, 10) == (pytest.approx(0.025 ** (1 / 10), rel=1e-12), 1.0)
    # the example: 3 robust samples of 60 → 1.0–13.9 %
    lo, hi = clopper_pearson(3, 60)
    assert round(100 * lo, 1) == 1.0 and round(100 * hi, 1) == 13.9
    assert clopper_pearson(0, 0) == (0.0, 1.0)


def test_interval_contains_the_estimate_and_narrows_with_n():
    widths = []
    for n in (10, 100, 1000):
        p = proportion(k=n // 2, n=n)
        assert p.lower < p.value < p.upper
        widths.append(p.upper - p.lower)
    assert widths[0] > widths[1] > widths[2]
    assert proportion([True, False, True, True]).k == 3 and proportion([True, False, True, True]).n == 4
    with pytest.raises(ValueError):
        clopper_pearson(5, 4)


@pytest.mark.parametrize("b, c", [(0, 6), (6, 0), (3, 9), (10, 10), (1, 0), (25, 40), (0, 0)])
def test_mcnemar_matches_two_sided_binomial_test(b, c):
    expected = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_known_value_and_paired_counts():
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # 2 · (1/2)^6
    before = [True] * 10 + [False] * 10
    after = [False] * 8 + [True] * 12  # samples 0-7 lost, samples 10-19 gained
    t = paired_test(before, after)
    assert (t.n, t.lost, t.gained) == (20, 8, 10)
    assert t.p_value == pytest.approx(binomtest(8, 18, 0.5).pvalue)
    assert not t.significant
    assert paired_test([True] * 12, [False] * 12).significant  # 12 of 12 lost: p = 2^-11
    with pytest.raises(ValueError, match="same samples"):
        paired_test([True], [True, False])
