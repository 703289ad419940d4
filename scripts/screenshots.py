#!/usr/bin/env python3
"""The docs' pictures, from a real scan: the embedded demo model on the embedded demo images (offline).

Runs ``robaudit scan`` on the embedded Fashion-MNIST CNN and 500 of the embedded test images (the
scan ``make demo`` runs, plus a gate that fails), then

- renders the scan's terminal output (stdout, colours included) with Rich's ``export_svg`` and
  photographs the SVG: ``docs/img/terminal-summary.png``;
- photographs the HTML report it wrote with the headless Chromium the tests use (``/usr/bin/chromium``,
  the flags of ``tests/test_browser.py``) and crops it: ``docs/img/report-verdict.png``,
  ``report-attacks.png``, ``report-gallery.png``, ``report-margins.png``.

PNGs are reduced to a 128-colour palette (flat UI, no dithering), so all of them stay a few hundred KB.

    python scripts/screenshots.py               # ~30 s of scan on 2 CPU cores, then a few s of Chromium
    python scripts/screenshots.py --keep tmp/   # also keep the scan's results.json, report.html, terminal.svg
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.text import Text

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"
DEMO_MODEL = ROOT / "robaudit" / "models" / "assets" / "demo_fashion_mnist_small_cnn.safetensors"
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [  # tests/test_browser.py's: offline, no sandbox (root in CI), no GPU
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
GATE = "lower(robust_acc.ensemble.linf@0.1) >= 0.30"
SCAN = ["-d", "demo", "-n", "500", "--eps", "0.05,0.1", "--require", GATE]  # the tour's scan (README)
WIDTH = 1100  # browser window, CSS pixels (device scale 1)
COLUMNS = 112  # terminal width of the summary picture

# (picture, selector whose top starts the crop, selector whose bottom ends it): elements of the report
CROPS = [
    ("report-verdict", "body", "#verdict"),
    ("report-attacks", "#section-attacks", "#section-attacks img.plot"),
    ("report-gallery", "#section-attacks h3", "#section-attacks .gallery figure:nth-of-type(4)"),
    ("report-margins", "#section-margins", "#section-margins img"),
]
PROBE = """<script>
window.addEventListener('load', function () {
  var sel = %s, out = {height: document.documentElement.scrollHeight};
  sel.forEach(function (s) {
    var e = document.querySelector(s);
    if (e) { var b = e.getBoundingClientRect(); out[s] = [b.top + window.scrollY, b.bottom + window.scrollY]; }
  });
  var pre = document.createElement('pre'); pre.id = 'rects'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180, check=True
    )


def small_png(image: Image.Image, path: Path) -> None:
    """A 128-colour palette PNG: screenshots of flat UI lose nothing visible and shrink 3-5×."""
    image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True
    )


def run_scan(work: Path) -> tuple[Path, str]:
    """The scan, as a user runs it; its stdout with colours (Rich honours FORCE_COLOR)."""
    env = {
        **os.environ,
        "FORCE_COLOR": "1",
        "COLUMNS": str(COLUMNS),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("NO_COLOR", None)
    cmd = [sys.executable, "-m", "robaudit", "scan", str(DEMO_MODEL), *SCAN, "--json", "results.json", "--html", "report.html"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=1800)  # paths print as typed
    if res.returncode != 1:  # the gate is meant to fail on this naturally trained model
        sys.exit(f"scan exited {res.returncode}, expected 1 (a failed gate):\n{res.stderr[-3000:]}")
    return work / "report.html", res.stdout


def terminal_picture(stdout: str, work: Path, profile: Path) -> None:
    console = Console(record=True, width=COLUMNS, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    shown = (
        "robaudit scan demo_fashion_mnist_small_cnn.safetensors "
        + " ".join(f"'{a}'" if " " in a else a for a in SCAN)
        + " --json results.json --html report.html"
    )
    console.print(Text("$ " + shown, style="bold"))
    console.print(Text.from_ansi(stdout.rstrip("\n")))
    svg = console.export_svg(title="robaudit scan")
    svg = re.sub(r"@font-face\s*\{.*?\}", "", svg, flags=re.S)  # no web font: nothing to fetch
    (work / "terminal.svg").write_text(svg, encoding="utf-8")
    w, h = (float(v) for v in re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg).groups())
    page = work / "terminal.html"
    page.write_text(
        f'<html><body style="margin:0;background:#fff"><img src="terminal.svg" width="{w:.0f}" '
        f'height="{h:.0f}"></body></html>',
        encoding="utf-8",
    )
    shot = work / "terminal.png"
    chromium(profile / "t", f"--window-size={int(w) + 1},{int(h) + 1}", f"--screenshot={shot}", page.as_uri())
    small_png(Image.open(shot).crop((0, 0, int(w), int(h))), OUT / "terminal-summary.png")


def report_pictures(html: Path, work: Path, profile: Path) -> None:
    selectors = sorted({s for _, top, bottom in CROPS for s in (top, bottom)})
    probe = work / "probe.html"
    probe.write_text(
        html.read_text(encoding="utf-8").replace("</body>", PROBE % json.dumps(selectors) + "</body>"), encoding="utf-8"
    )
    dom = chromium(
        profile / "p", f"--window-size={WIDTH},1000", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()
    ).stdout
    rects = json.loads(re.search(r'<pre id="rects">(.*?)</pre>', dom, flags=re.S).group(1))
    missing = [s for s in selectors if s not in rects]
    if missing:
        sys.exit(f"the report has no element for {missing}: update CROPS in {Path(__file__).name}")
    shot = work / "report.png"
    chromium(profile / "s", f"--window-size={WIDTH},{rects['height']}", f"--screenshot={shot}", html.as_uri())
    page = Image.open(shot)
    for name, top, bottom in CROPS:
        y0, y1 = max(0, int(rects[top][0]) - 10), min(page.height, int(rects[bottom][1]) + 14)
        small_png(page.crop((0, y0, WIDTH, y1)), OUT / f"{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="also copy the scan's files and the raw pictures here")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install chromium")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        html, stdout = run_scan(work)
        terminal_picture(stdout, work, work / "profile")
        report_pictures(html, work, work / "profile")
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("profile"))
    for png in sorted(OUT.glob("*.png")):
        print(f"{png.relative_to(ROOT)}  {png.stat().st_size / 1024:.0f} KB  {Image.open(png).size}")


if __name__ == "__main__":
    main()
