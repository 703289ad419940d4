"""HTML report and terminal summary of the geometry sections, from a real scan of a tiny CNN."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re

import numpy as np
import pytest
import torch
from conftest import TinyCNN
from PIL import Image
from rich.console import Console

import robaudit.checks.curvature as curvature_mod
import robaudit.checks.landscape as landscape_mod
import robaudit.checks.surfaces as surfaces_mod
from robaudit.config import ScanConfig, parse_attack_list
from robaudit.data.spec import DataSpec
from robaudit.engine import run_scan
from robaudit.models.spec import LoadedModel, ModelInfo
from robaudit.report.html import render_html
from robaudit.report.plots import figure
from robaudit.report.surface_plots import draw_boundary
from robaudit.report.terminal import print_summary
from robaudit.results import ScanResult

GEOMETRY = ("minimal", "jacobian", "curvature", "indicator", "spectra", "surfaces", "landscape")
# section → alt texts of the figures its partial must show
FIGURES = {
    "minimal": ["Histogram of the minimal perturbation per sample"],
    "jacobian": ["Histograms of the margin Jacobian norm and near-zero entries", "Margin Jacobian heatmaps"],
    "curvature": ["Curvature profile: sorted Hessian eigenvalues"],
    "indicator": ["Indicator radius versus attack radius", "Theorem 1 bounds and attack-found radius per sample"],
    "spectra": ["Singular values per layer"],
    "surfaces": ["Decision and loss surfaces of sample"],
    "landscape": ["Filter-normalized loss landscape"],
}


@pytest.fixture(scope="module")
def result() -> ScanResult:
    """Every check on 8 random 1×8×8 images; small k, grids and one surface sample keep it fast."""
    mp = pytest.MonkeyPatch()
    mp.setattr(curvature_mod.CurvatureCheck, "k", 4)
    mp.setattr(landscape_mod.LandscapeCheck, "steps_1d", 5)
    mp.setattr(landscape_mod.LandscapeCheck, "steps_2d", 5)
    mp.setattr(surfaces_mod.SurfacesCheck, "steps", 9)
    mp.setattr(surfaces_mod.SurfacesCheck, "n_samples", 1)
    try:
        torch.manual_seed(0)
        net = TinyCNN().eval()
        x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = net(x).argmax(1)
        y[::4] = (y[::4] + 1) % 10
        data = DataSpec("synthetic", "test", x, y, tuple(f"class-{i}" for i in range(10)), "memory")
        loaded = LoadedModel(net, ModelInfo(path="m.safetensors", format="safetensors", sha256="0" * 64, arch="tiny"))
        config = ScanConfig(
            eps=(0.02, 0.05),
            attacks=parse_attack_list("fgsm,pgd:steps=3"),
            device="cpu",
            batch_size=64,
            checks=("clean", "attacks", *GEOMETRY),
            keep_examples=4,
        )
        return run_scan(loaded, data, config, command_line="t", quiet=True)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def html(result) -> str:
    return render_html(result)


def _section_html(html: str, name: str) -> str:
    start = html.index(f'id="section-{name}"')
    end = html.find("<section", start)
    return html[start : end if end > 0 else None]


def _pngs(fragment: str) -> list[tuple[str, Image.Image]]:
    out = []
    for alt, src in re.findall(r'<img [^>]*alt="([^"]*)" src="([^"]+)"', fragment):
        assert src.startswith("data:image/png;base64,"), alt
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.load()
        assert img.format == "PNG" and img.width > 0 and img.height > 0
        out.append((alt, img))
    return out


def test_every_geometry_section_has_its_figures(result, html):
    assert set(GEOMETRY) <= set(result.sections)
    for name in GEOMETRY:
        alts = [alt for alt, _ in _pngs(_section_html(html, name))]
        for expected in FIGURES[name]:
            assert any(a.startswith(expected) for a in alts), (name, expected, alts)
        assert "Fields (" not in _section_html(html, name), f"{name} fell back to the generic partial"
    surfaces = result.section("surfaces")
    assert sum(a.startswith("Decision and loss surfaces") for a, _ in _pngs(_section_html(html, "surfaces"))) == len(
        surfaces.samples
    )
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html


def test_minimal_stores_deepfool_radii_and_old_json_still_reads(result):
    sec = result.section("minimal")
    assert len(sec.deepfool_radii) == len(sec.radii)
    for refined, deepfool in zip(sec.radii, sec.deepfool_radii):
        assert (refined is None) == (deepfool is None)
        if refined is not None:
            assert refined <= deepfool * (1 + 1e-6)  # bisection only tightens DeepFool's radius
    data = json.loads(result.to_json())
    del data["sections"]["minimal"]["deepfool_radii"]  # a result written before the field existed
    old = ScanResult.from_dict(data)
    assert old.section("minimal").deepfool_radii == ()
    assert 'alt="Histogram of the minimal perturbation per sample"' in render_html(
        dataclasses.replace(old, sections={"clean": old.section("clean"), "minimal": old.section("minimal")})
    )


def test_absent_sections_are_absent(result):
    kept = {k: v for k, v in result.sections.items() if k not in ("curvature", "indicator", "surfaces")}
    html = render_html(dataclasses.replace(result, sections=kept))
    for name in ("curvature", "indicator", "surfaces"):
        assert f'id="section-{name}"' not in html
    assert "Curvature profile" not in html and "Theorem 1" not in html and "decision boundary L = 0" not in html
    assert 'id="section-jacobian"' in html and 'id="section-landscape"' in html


def test_rerender_from_json_is_identical(result, html, tmp_path):
    path = tmp_path / "results.json"
    result.write_json(path)
    assert len(path.read_bytes()) < 200_000  # heatmaps and surfaces keep the JSON modest
    assert render_html(ScanResult.read_json(path)) == html


def test_gallery_shows_the_jacobian_heatmap_of_a_stored_sample(result, html):
    heat = {h.index for h in result.section("jacobian").heatmaps}
    shown = [ex.index for ex in result.section("attacks").examples if ex.index in heat]
    assert shown, "the weakest broken samples overlap the lowest-margin heatmaps on this data"
    for i in shown:
        assert f'alt="margin Jacobian of sample {i}"' in html


def test_boundary_helper_draws_the_zero_level():
    a = np.linspace(-1, 1, 9)
    grid = a[:, None] - 0.3 + 0 * a[None, :]  # L = a − 0.3: the boundary is the line a = 0.3
    fig = figure(3, 3)
    ax = fig.add_subplot()
    cs = draw_boundary(ax, a, a, grid)
    assert list(cs.levels) == [0.0]
    xs = np.concatenate([seg[:, 0] for seg in cs.allsegs[0]])
    assert xs.size and np.allclose(xs, 0.3)
    assert draw_boundary(ax, a, a, grid + 5.0) is None  # L > 0 everywhere: no boundary in view


def test_surface_figure_contains_the_boundary_of_real_planes(result):
    srf = result.section("surfaces")
    a = np.asarray(srf.axis)
    crossing = [p for s in srf.samples for p in s.planes if min(map(min, p.margin)) < 0 < max(map(max, p.margin))]
    assert crossing, "some plane crosses the decision boundary within ±2ε"
    ax = figure(3, 3).add_subplot()
    cs = draw_boundary(ax, a, a, np.asarray(crossing[0].margin))
    assert list(cs.levels) == [0.0] and sum(len(s) for s in cs.allsegs[0]) > 0


def _colour_codes(text: str) -> list[str]:
    """SGR parameters that set a foreground or background colour (30–49, 90–107)."""
    params = [p for seq in re.findall(r"\x1b\[([0-9;]*)m", text) for p in seq.split(";") if p]
    return [p for p in params if 30 <= int(p) <= 49 or 90 <= int(p) <= 107]


def test_terminal_tables_without_colour(result, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    buf = io.StringIO()
    print_summary(result, Console(file=buf, width=120, force_terminal=True))
    text = buf.getvalue()
    assert not _colour_codes(text)  # bold/dim/italic only: every status is also a word
    for title in (
        "Minimal perturbation",
        "Input Jacobian",
        "Curvature of the loss",
        "Bounds and indicator",
        "Layer spectra",
        "Decision surfaces",
        "Loss landscape",
    ):
        assert title in text, title
    minimal = result.section("minimal")
    assert f"{minimal.median:.4g}" in text
    only_clean = dataclasses.replace(result, sections={"clean": result.section("clean")})
    buf = io.StringIO()
    print_summary(only_clean, Console(file=buf, width=120))
    assert "Curvature" not in buf.getvalue() and "Layer spectra" not in buf.getvalue()
