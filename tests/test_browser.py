"""The report of a scan with every check in a real browser: headless Chromium loads it offline, every image decodes, no console errors.

Skipped when /usr/bin/chromium is absent (Debian package ``chromium``; .ci/run installs it).
"""

from __future__ import annotations

import base64
import io
import re
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import robaudit.checks.curvature as curvature_mod
import robaudit.checks.landscape as landscape_mod
import robaudit.checks.surfaces as surfaces_mod
from robaudit.config import ScanConfig, parse_attack_list
from robaudit.data.spec import DataSpec
from robaudit.engine import run_scan
from robaudit.models.spec import LoadedModel, ModelInfo
from robaudit.report.html import render_html

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--enable-logging=stderr",
    "--v=0",
]
# Injected for this test only (the report itself has no script): count the images that failed to decode.
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); });
  var out = document.createElement('pre');
  out.id = 'imgcheck';
  out.textContent = 'images=' + imgs.length + ' broken=' + bad.length;
  document.body.appendChild(out);
});
</script>"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (apt-get install chromium)"),
]


def _rgb_result(monkeypatch):
    """Every check (the geometry battery with small k and grids) on 20 random 3×8×8 images."""
    monkeypatch.setattr(curvature_mod.CurvatureCheck, "k", 4)
    monkeypatch.setattr(landscape_mod.LandscapeCheck, "steps_1d", 5)
    monkeypatch.setattr(landscape_mod.LandscapeCheck, "steps_2d", 5)
    monkeypatch.setattr(surfaces_mod.SurfacesCheck, "steps", 9)
    monkeypatch.setattr(surfaces_mod.SurfacesCheck, "n_samples", 1)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64, 5)
    ).eval()
    x = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[::3] = (y[::3] + 1) % 5
    data = DataSpec("synthetic-rgb", "test", x, y, ("cat", "dog", "<ship>", "truck & van", "frog"), "memory")
    loaded = LoadedModel(net, ModelInfo(path="rgb.safetensors", format="safetensors", sha256="f" * 64, arch="tiny-rgb"))
    config = ScanConfig(
        eps=(2 / 255, 8 / 255),
        attacks=parse_attack_list("fgsm,pgd:steps=3"),
        device="cpu",
        checks=(
            "clean",
            "sanity",
            "attacks",
            "margins",
            "minimal",
            "jacobian",
            "curvature",
            "indicator",
            "spectra",
            "surfaces",
            "landscape",
        ),
        keep_examples=4,
    )
    return run_scan(loaded, data, config, command_line="t")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_report_loads_and_images_decode(tmp_path, monkeypatch):
    html = render_html(_rgb_result(monkeypatch))
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(srcs) >= 4 + 3 * 4
    for src in srcs:  # decode every embedded PNG in Python too
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.load()
        assert img.width > 0 and img.height > 0

    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", CHECK_SCRIPT + "\n</body>"), encoding="utf-8")

    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<pre id="imgcheck">images=(\d+) broken=(\d+)</pre>', dom.stdout)
    assert m, dom.stdout[-2000:]
    assert int(m.group(1)) == len(srcs) and int(m.group(2)) == 0
    assert "robaudit report" in dom.stdout and "&lt;ship&gt;" in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console

    shot = tmp_path / "report.png"
    res = _chromium(tmp_path, "--window-size=1200,2400", "--hide-scrollbars", f"--screenshot={shot}", page.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    png = Image.open(shot).convert("L")
    assert png.size == (1200, 2400)
    lo, hi = png.getextrema()
    assert hi - lo > 100, "blank screenshot"
    assert not [line for line in res.stderr.splitlines() if "CONSOLE" in line]
