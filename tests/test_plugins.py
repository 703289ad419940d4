"""Plugin discovery: lazy entry points (monkeypatched importlib.metadata), collisions, broken
plugins, the `robaudit plugins` command, and the real example plugin when it is installed."""

from __future__ import annotations

import sys
from importlib import metadata
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import robaudit.registry as reg
from robaudit.cli.main import app
from robaudit.errors import UsageError
from robaudit.registry import Registry, discover


class FakeEP:
    """Stands in for importlib.metadata.EntryPoint; counts loads."""

    def __init__(self, name, group, value, dist, version="1.0", obj=None, error=None):
        self.name, self.group, self.value = name, group, value
        self.dist = SimpleNamespace(name=dist, version=version)
        self._obj, self._error, self.loads = obj, error, 0

    def load(self):
        self.loads += 1
        if self._error:
            raise self._error
        return self._obj


@pytest.fixture
def fake_eps(monkeypatch):
    eps: list[FakeEP] = []
    monkeypatch.setattr(metadata, "entry_points", lambda group=None, **kw: [e for e in eps if e.group == group])
    return eps


def test_listing_loads_nothing_lookup_loads_one(fake_eps):
    good = FakeEP("wow", "robaudit.t1", "pkg_a.mod:Wow", "pkg-a", "2.3", obj="WOW")
    other = FakeEP("zap", "robaudit.t1", "pkg_b.mod:Zap", "pkg-b", obj="ZAP")
    fake_eps += [good, other]
    r = Registry("thing", "robaudit.t1")
    assert r.names() == ["wow", "zap"] and "wow" in r
    entries = {e.name: e for e in r.entries()}
    assert (entries["wow"].distribution, entries["wow"].version, entries["wow"].target) == ("pkg-a", "2.3", "pkg_a.mod:Wow")
    infos, collisions = discover(("robaudit.t1",))
    assert [(i.name, i.distribution, i.target) for i in infos] == [
        ("wow", "pkg-a", "pkg_a.mod:Wow"),
        ("zap", "pkg-b", "pkg_b.mod:Zap"),
    ]
    assert collisions == []
    assert good.loads == 0 and other.loads == 0 and not entries["wow"].loaded
    assert r.get("WOW") == "WOW" and good.loads == 1 and other.loads == 0
    assert r.get("wow") == "WOW" and good.loads == 1  # loaded once, then cached


def test_collision_names_both_distributions(fake_eps):
    fake_eps += [FakeEP("dup", "robaudit.t2", "a:X", "dist-a", obj=1), FakeEP("dup", "robaudit.t2", "b:X", "dist-b", obj=2)]
    r = Registry("thing", "robaudit.t2")
    for _ in range(2):  # every lookup repeats the error, not only the first
        with pytest.raises(UsageError, match="'dist-a' and 'dist-b'"):
            r.get("dup")
    infos, collisions = discover(("robaudit.t2",))
    assert len(collisions) == 1 and "dist-a" in collisions[0] and "dist-b" in collisions[0]
    assert len(infos) == 2


def test_collision_with_a_builtin(monkeypatch):
    from robaudit.attacks.base import ATTACKS

    ATTACKS.names()  # index the real registry with the real metadata before faking it
    fake = [FakeEP("pgd", "robaudit.attacks", "evil:PGD", "evil-attacks", obj=object())]
    monkeypatch.setattr(metadata, "entry_points", lambda group=None, **kw: [e for e in fake if e.group == group])
    fresh = Registry("attack", "robaudit.attacks")
    fresh._entries = dict(ATTACKS._entries)  # the built-ins as registered, plus the fake plugin
    with pytest.raises(UsageError, match="'robaudit' and 'evil-attacks'"):
        fresh.names()
    assert fake[0].loads == 0  # detected from metadata, nothing imported


def test_same_distribution_twice_is_not_a_collision(fake_eps):
    fake_eps += [FakeEP("one", "robaudit.t3", "m:A", "dist-a", obj=1), FakeEP("one", "robaudit.t3", "m:A", "dist-a", obj=1)]
    assert Registry("thing", "robaudit.t3").get("one") == 1
    assert discover(("robaudit.t3",))[1] == []


def test_broken_plugin_reported_with_distribution_rest_works(fake_eps):
    fake_eps += [
        FakeEP("bad", "robaudit.t4", "nope:X", "broken-dist", error=ImportError("No module named 'nope'")),
        FakeEP("fine", "robaudit.t4", "m:F", "fine-dist", obj="F"),
    ]
    r = Registry("thing", "robaudit.t4")
    with pytest.raises(UsageError, match="broken-dist.*No module named 'nope'"):
        r.get("bad")
    assert r.get("fine") == "F"
    assert r.names() == ["fine"]
    assert len(r.load_errors) == 1 and "broken-dist" in r.load_errors[0]
    r2 = Registry("thing", "robaudit.t4")
    assert r2.load_all() == [r2.load_errors[0]] and "broken-dist" in r2.load_errors[0] and r2.names() == ["fine"]


def test_plugins_command_lists_without_importing_and_check_reports_failures(fake_eps, monkeypatch):
    fake_eps += [
        FakeEP("ghost", "robaudit.attacks", "robaudit_no_such_module_xyz:Ghost", "ghost-dist", "0.9"),
        FakeEP("bigarch", "robaudit.architectures", "builtins:abs", "arch-dist", "1.1"),
    ]
    monkeypatch.setenv("COLUMNS", "200")
    res = CliRunner().invoke(app, ["plugins"])
    assert res.exit_code == 0, res.output
    assert "ghost-dist" in res.output and "0.9" in res.output and "robaudit_no_such_module_xyz:Ghost" in res.output
    assert "robaudit_no_such_module_xyz" not in sys.modules
    res = CliRunner().invoke(app, ["plugins", "--check"])
    assert res.exit_code == 1
    assert "import failed" in res.output and "ModuleNotFoundError" in res.output
    assert "must accept num_classes, in_channels" in res.output  # abs(x) is no architecture factory


def test_plugins_command_with_none_installed(fake_eps):
    res = CliRunner().invoke(app, ["plugins"])
    assert res.exit_code == 0 and "no robaudit plugins installed" in res.output


def test_hardeners_use_the_registry_group():
    from robaudit.harden import HARDENERS

    assert isinstance(HARDENERS, Registry) and HARDENERS.group == "robaudit.hardeners"
    assert reg.GROUPS == (
        "robaudit.attacks",
        "robaudit.checks",
        "robaudit.architectures",
        "robaudit.datasets",
        "robaudit.hardeners",
    )


# --- the real example plugin (plugins/robaudit-example) ------------------------------------------


def _example_installed() -> bool:
    try:
        metadata.distribution("robaudit-example")
    except metadata.PackageNotFoundError:
        return False
    return True


needs_example = pytest.mark.skipif(
    not _example_installed(),
    reason="robaudit-example is not installed: pip install ./plugins/robaudit-example (make venv does)",
)


@needs_example
def test_example_plugin_is_discovered_lazily_then_usable():
    import subprocess

    # a fresh interpreter: listing every registry must not import the plugin's modules
    code = (
        "import sys\n"
        "from robaudit.attacks import ATTACKS\nfrom robaudit.checks import CHECKS\nfrom robaudit.models import ARCHITECTURES\n"
        "assert 'mi-fgsm' in ATTACKS.names() and 'confidence-calibration' in CHECKS.names() and 'tiny-mlp' in ARCHITECTURES.names()\n"
        "e = next(e for e in ATTACKS.entries() if e.name == 'mi-fgsm')\n"
        "assert e.distribution == 'robaudit-example' and not e.loaded, e\n"
        "assert not any(m.startswith('robaudit_example.') for m in sys.modules), sorted(sys.modules)\n"
        "cls = ATTACKS.get('mi-fgsm')\n"
        "assert 'robaudit_example.mifgsm' in sys.modules and 'robaudit_example.calibration' not in sys.modules\n"
        "print(cls.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "MIFGSM"


@needs_example
def test_example_plugin_in_plugins_command(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    res = CliRunner().invoke(app, ["plugins", "--check"])
    assert res.exit_code == 0, res.output
    version = metadata.version("robaudit-example")
    for text in ("mi-fgsm", "confidence-calibration", "tiny-mlp", "robaudit-example", version):
        assert text in res.output
    res = CliRunner().invoke(app, ["list", "attacks"])
    assert "mi-fgsm" in res.output and "robaudit-example" in res.output
