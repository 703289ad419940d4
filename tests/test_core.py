"""Threat-model parsing, attack-list parsing, the registry's plugin path."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from robaudit.config import parse_attack_list
from robaudit.errors import UsageError
from robaudit.registry import Registry
from robaudit.threat import Norm, format_eps, parse_eps, parse_eps_list


def test_eps_parsing():
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps_list("0.3,0.1,0.1") == [0.1, 0.3]
    assert parse_eps_list("0:0.3:4") == pytest.approx([0.0, 0.1, 0.2, 0.3])
    with pytest.raises(UsageError, match="sweep"):
        parse_eps_list("0.3:0.1:4")
    assert format_eps(8 / 255) == "8/255"
    assert format_eps(0.1) == "0.1"
    for bad in ("abc", "-0.1", "1/0", "nan"):
        with pytest.raises(UsageError):
            parse_eps(bad)
    assert Norm.parse("Linf") is Norm.LINF and Norm.parse("l2") is Norm.L2
    with pytest.raises(UsageError):
        Norm.parse("l3")


def test_attack_list_parsing():
    quick = parse_attack_list("quick")
    assert [s.name for s in quick] == ["fgsm", "pgd"]
    specs = parse_attack_list("pgd:steps=50:restarts=2,fgsm")
    # canonical: sorted by name, only what differs from the defaults
    assert specs[0].params == (("restarts", 2), ("steps", 50)) and specs[1].name == "fgsm"
    assert parse_attack_list("pgd:steps=50,restarts=2")[0].params == (("restarts", 2), ("steps", 50))
    assert parse_attack_list("pgd:loss=cw")[0].label == "pgd[loss=cw]"


@pytest.mark.parametrize(
    "text, label",
    [
        ("pgd:steps=20", "pgd"),  # PGD's default: the registry name
        ("pgd:restarts=2:steps=50", "pgd[restarts=2,steps=50]"),
        ("pgd:steps=50:restarts=2", "pgd[restarts=2,steps=50]"),  # order does not matter
        ("pgd:step_size=0.25", "pgd[step_size=0.25]"),
        ("bim:step_size=1/10", "bim"),  # 1/10 = 0.1, BIM's default
        ("fab-t:n_iter=100:eta=1.05", "fab-t"),
        ("apgd-t:n_target_classes=3", "apgd-t[n_target_classes=3]"),
        ("square:n_queries=5000", "square"),
        ("pgd:random_start=false", "pgd[random_start=false]"),
        ("pgd:step_size=2/255", "pgd[step_size=2/255]"),
    ],
)
def test_attack_labels_are_canonical(text, label):
    assert parse_attack_list(text)[0].label == label
    with pytest.raises(UsageError, match="parameters are"):
        parse_attack_list("pgd:stepz=3")
    with pytest.raises(UsageError, match="unknown attack"):
        parse_attack_list("nope")


def _fake_entry_points(eps):
    return lambda group: [e for e in eps if e.group == group]


def _ep(name, group, obj, dist, fail=False):
    def load():
        if fail:
            raise ImportError("boom")
        return obj

    return SimpleNamespace(name=name, group=group, load=load, dist=SimpleNamespace(name=dist, version="1.2"))


def test_registry_loads_plugins_reports_broken_and_collisions(monkeypatch):
    import robaudit.registry as reg

    eps = [_ep("mine", "robaudit.test", 42, "my-plugin"), _ep("broken", "robaudit.test", None, "bad-plugin", fail=True)]
    monkeypatch.setattr(reg, "_entry_points", _fake_entry_points(eps))
    r = Registry("thing", "robaudit.test")
    assert r.get("mine") == 42
    assert "broken" in r and not r.load_errors  # declared; imported only on lookup (lazy)
    with pytest.raises(UsageError, match="bad-plugin"):
        r.get("broken")
    assert "broken" not in r
    assert any("bad-plugin" in m for m in r.load_errors)
    entry = next(e for e in r.entries() if e.name == "mine")
    assert entry.distribution == "my-plugin" and entry.version == "1.2"

    eps2 = [_ep("dup", "robaudit.test2", 1, "dist-a"), _ep("dup", "robaudit.test2", 2, "dist-b")]
    monkeypatch.setattr(reg, "_entry_points", _fake_entry_points(eps2))
    r2 = Registry("thing", "robaudit.test2")
    with pytest.raises(UsageError, match="dist-a.*dist-b"):
        r2.names()
