"""`blackbox-beats-whitebox` is a binomial test on the white-box survivors a black-box attack breaks
(docs/flags.md): silent on a few lucky successes among many survivors, raised when many fall.
End to end on real models (working, quantized input, scaled logits): tests/test_flags.py."""

from __future__ import annotations

import math

import pytest

from robaudit.checks.attacks import (
    MASKING_ALPHA,
    MASKING_RATE,
    AttackRun,
    AttacksSection,
    attack_flags,
    binomial_tail,
    blackbox_only_counts,
    min_broken_to_flag,
)
from robaudit.results import ScanResult


def _brute_tail(k: int, m: int, p: float) -> float:
    return sum(math.comb(m, i) * p**i * (1 - p) ** (m - i) for i in range(k, m + 1))


@pytest.mark.parametrize("m", [1, 2, 5, 34, 115, 400])
def test_binomial_tail_is_exact(m):
    for k in range(0, min(m, 12) + 1):
        assert binomial_tail(k, m, MASKING_RATE) == pytest.approx(_brute_tail(k, m, MASKING_RATE), rel=1e-9, abs=1e-300)
    assert binomial_tail(m + 1, m, MASKING_RATE) == 0.0


def test_the_smallest_flagged_count_is_where_the_tail_drops_below_alpha():
    for m in (2, 3, 10, 34, 115, 230, 1000, 5000):
        k = min_broken_to_flag(m)
        assert k is not None and k >= 2  # one sample alone never flags: P[K ≥ 1] ≥ MASKING_RATE > α
        assert binomial_tail(k, m, MASKING_RATE) <= MASKING_ALPHA < binomial_tail(k - 1, m, MASKING_RATE)
    # fewer than log α / log p0 survivors: not even all of them broken is evidence
    assert min_broken_to_flag(1) is None
    needed = [min_broken_to_flag(m) / m for m in (100, 1000, 10000)]
    assert needed == sorted(needed, reverse=True) and needed[-1] < 2 * MASKING_RATE  # → p0 as m grows


def _run(name: str, kind: str, attacked: list[bool], broken: list[bool], eps: float = 0.1) -> AttackRun:
    n = len(attacked)
    robust = tuple(a and not b for a, b in zip(attacked, broken))
    return AttackRun(
        attack=name,
        kind=kind,
        single_step=False,
        params={},
        norm="linf",
        eps=eps,
        robust_accuracy=sum(robust) / n,
        success_rate=0.0,
        n_attacked=sum(attacked),
        mean_perturbation=None,
        forward_per_sample=0.0,
        backward_per_sample=0.0,
        seconds=0.0,
        robust=robust,
        attacked=tuple(attacked),
        broken=tuple(broken),
    )


def _cascade(n: int, white_broken: int, black_broken: int) -> tuple[AttackRun, ...]:
    """APGD breaks the first ``white_broken`` samples; Square attacks the rest and breaks ``black_broken``."""
    white = _run("apgd-ce", "white-box", [True] * n, [i < white_broken for i in range(n)])
    left = [i >= white_broken for i in range(n)]
    black = _run("square", "black-box", left, [white_broken <= i < white_broken + black_broken for i in range(n)])
    return white, black


def _flags(runs) -> list:
    n = len(runs[0].attacked)
    sec = AttacksSection(
        norm="linf",
        mode="cascade",
        eps=(0.1,),
        runs=runs,
        ensemble={},
        ensemble_robust={},
        blackbox_only=blackbox_only_counts(runs, n),
    )
    return sec, [f for f in attack_flags(sec, {}, n) if f.code == "blackbox-beats-whitebox"]


@pytest.mark.parametrize("lucky", [1, 2])
def test_one_or_two_lucky_square_successes_among_many_survivors_are_not_masking(lucky):
    sec, flags = _flags(_cascade(500, 200, lucky))  # 300 white-box survivors
    assert flags == []
    (c,) = sec.blackbox_only
    assert (c.attacked, c.broken, c.flagged) == (300, lucky, False)
    assert c.needed == min_broken_to_flag(300) and c.needed > lucky


def test_many_square_successes_are_flagged_with_the_counts():
    sec, flags = _flags(_cascade(500, 200, 30))
    assert len(flags) == 1
    assert "square broke 30 of the 300 samples that survived every white-box attack" in flags[0].message
    assert sec.blackbox_only[0].flagged and sec.blackbox_only[0].p_value <= MASKING_ALPHA


def test_independent_mode_counts_only_white_box_survivors():
    n = 100
    white = _run("pgd", "white-box", [True] * n, [i < 60 for i in range(n)])
    black = _run("square", "black-box", [True] * n, [i < 70 for i in range(n)])  # 60 of its 70 APGD broke too
    (c,) = blackbox_only_counts((white, black), n)
    assert (c.attacked, c.broken) == (40, 10)


def test_counts_survive_the_json_round_trip():
    sec, _ = _flags(_cascade(50, 10, 3))
    from robaudit.results import Provenance

    prov = Provenance(
        robaudit_version="x",
        torch_version="x",
        device="cpu",
        seed=0,
        checkpoint="m",
        checkpoint_sha256="",
        checkpoint_format="x",
        arch=None,
        dataset="d",
        split="test",
        n=50,
        input_shape=(1, 2, 2),
        class_names=("a",),
        data_source="s",
    )
    back = ScanResult.from_dict(ScanResult(provenance=prov, sections={"attacks": sec}).to_dict())
    assert back.section("attacks").blackbox_only == sec.blackbox_only


def test_the_table_in_docs_flags_md_is_the_rule():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "flags.md").read_text()
    ms = re.search(r"\| survivors m \|(.*)\|\n", text).group(1)
    ks = re.search(r"\| black-box-only successes needed \|(.*)\|\n", text).group(1)
    table = {int(m.strip().replace(",", "")): int(k) for m, k in zip(ms.split("|"), ks.split("|"))}
    assert table == {m: min_broken_to_flag(m) for m in table}
