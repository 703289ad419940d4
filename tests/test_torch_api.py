"""torch's lower bound (pyproject ``torch>=2.6``) and the torch APIs robaudit calls.

The bound is set by security, not by an API: before 2.6 ``torch.load(weights_only=True)`` could
be made to run code (CVE-2025-32434). The newest APIs robaudit calls are
``torch.serialization.safe_globals`` and ``get_unsafe_globals_in_checkpoint`` (torch 2.5). The test
lists every torch API of the families robaudit uses beyond the basics, with the release that
introduced it, checks each exists here, that the source tree calls no unlisted one, and that
pyproject's bound is the security minimum and not below any API's release.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest
import torch

from robaudit.models._pickle_load import _MIN_TORCH

ROOT = Path(__file__).resolve().parents[1]

# dotted name -> the torch release that introduced it
TORCH_APIS = {
    "torch.serialization.safe_globals": (2, 5),
    "torch.serialization.get_unsafe_globals_in_checkpoint": (2, 5),
    "torch.func.grad": (2, 0),
    "torch.func.vmap": (2, 0),
    "torch.func.jvp": (2, 0),
    "torch.export.save": (2, 1),
    "torch.export.load": (2, 1),
    "torch.export.Dim": (2, 1),
    "torch.linalg.eigh": (1, 8),
    "torch.linalg.eigvalsh": (1, 8),
    "torch.linalg.svdvals": (1, 9),
    "torch.hub.get_dir": (1, 6),
    "torch.hub.download_url_to_file": (1, 5),
    "torch.hub.HASH_REGEX": (1, 5),
    "torch.hub.load_state_dict_from_url": (1, 5),  # named in docs only: robaudit reads hub files itself
    "torch.jit.load": (1, 0),
    "torch.jit.save": (1, 0),
    "torch.jit.script": (1, 0),
    "torch.jit.trace": (1, 0),  # tests build TorchScript files with these
    "torch.jit.export": (1, 0),
    "torch.jit.ScriptModule": (1, 0),  # certify refuses TorchScript models (certify/graph.py)
    "torch.export.export": (2, 1),
    "torch.onnx.export": (1, 0),  # tests export ONNX models with it
}
# keyword arguments robaudit passes
TORCH_KWARGS = {
    "torch.load": ("weights_only", "map_location"),
    "torch.export.load": ("extra_files",),
    "torch.jit.load": ("_extra_files", "map_location"),
}
_FAMILIES = re.compile(r"\btorch\.(serialization|func|export|linalg|hub|jit|onnx)\.([A-Za-z_][A-Za-z0-9_]*)")


def _resolve(dotted: str):
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


@pytest.mark.parametrize("dotted", sorted(TORCH_APIS))
def test_listed_api_exists(dotted):
    assert _resolve(dotted) is not None


@pytest.mark.parametrize("dotted", sorted(TORCH_KWARGS))
def test_keyword_arguments_exist(dotted):
    params = inspect.signature(_resolve(dotted)).parameters
    for kw in TORCH_KWARGS[dotted]:
        assert kw in params, f"{dotted} has no {kw} argument in torch {torch.__version__}"


def test_every_torch_api_robaudit_calls_is_listed():
    used = set()
    for path in list((ROOT / "robaudit").rglob("*.py")) + list((ROOT / "tests").rglob("*.py")):
        if path.name == Path(__file__).name:
            continue
        for family, name in _FAMILIES.findall(path.read_text(encoding="utf-8")):
            used.add(f"torch.{family}.{name}")
    unlisted = sorted(u for u in used if u not in TORCH_APIS)
    assert not unlisted, f"add these to TORCH_APIS with the torch release that introduced them: {unlisted}"


def test_pyproject_bound_is_the_security_minimum_and_covers_every_api():
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"torch\b", d) and not d.startswith("torchvision"))
    bound = tuple(int(v) for v in re.search(r">=\s*([\d.]+)", spec).group(1).split(".")[:2])
    assert bound == _MIN_TORCH == (2, 6)
    assert max(TORCH_APIS.values()) <= bound
    installed = tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:2])
    assert installed >= bound
