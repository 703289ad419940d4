"""Where a model comes from: architecture specs with published weights, and the list of sources.

An architecture spec (``--arch``) is a registry name (built-in or plugin), ``path/to/net.py:Class``,
``torchvision:NAME[:WEIGHTS]`` or ``timm:NAME[.TAG]``. Published weights are named in the spec or
with ``--weights`` (torchvision: an enum member such as ``IMAGENET1K_V2`` or ``DEFAULT``; timm: a
pretrained tag such as ``a1_in1k``) and read from the local torch hub / Hugging Face cache, never
downloaded unless asked. :func:`model_sources` describes every way a model gets in, for
``robaudit list architectures -v`` and the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import _timm, _torchvision
from .spec import Preprocessing

__all__ = ["ArchRef", "NamedWeights", "parse_arch", "named_weights", "weights_is_file", "ModelSource", "model_sources"]

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".tar")


@dataclass(frozen=True)
class ArchRef:
    """A parsed ``--arch``: ``family`` is "torchvision", "timm" or "" (registry name or Python file);
    ``name`` the architecture without weights; ``weights`` the published weights' name or None."""

    family: str
    name: str
    weights: str | None = None

    @property
    def spec(self) -> str:
        """The architecture alone, as build_architecture and robaudit metadata take it."""
        return f"{self.family}:{self.name}" if self.family else self.name


def parse_arch(spec: str, weights: str | None = None) -> ArchRef:
    """Split ``torchvision:resnet50:IMAGENET1K_V2`` / ``timm:resnet18.a1_in1k`` into architecture and
    weights; ``weights`` (``--weights NAME``) is the same as naming them in the spec."""
    family = ""
    name, named = spec, None
    if spec.startswith(_torchvision.PREFIX):
        family = "torchvision"
        name, _, named = spec[len(_torchvision.PREFIX) :].partition(":")
    elif spec.startswith(_timm.PREFIX):
        family = "timm"
        name, _, named = spec[len(_timm.PREFIX) :].partition(".")
    named = named or None
    if weights is not None and named is not None and weights != named:
        raise UsageError(f"--arch {spec} names the weights {named} but --weights says {weights}; give them once")
    if weights is not None and not family:
        raise UsageError(
            f"--weights {weights} names published weights, which only torchvision: and timm: architectures have; "
            f"pass your weights file as the CHECKPOINT argument"
        )
    if family and not name:
        raise UsageError(f"--arch {spec}: the model name is missing (e.g. {family}:resnet18)")
    return ArchRef(family, name, weights if weights is not None else named)


def weights_is_file(value: str) -> bool:
    """``--weights`` is a file when it exists, has a path separator or a weights suffix; else a name."""
    return Path(value).expanduser().exists() or "/" in value or "\\" in value or value.lower().endswith(WEIGHT_SUFFIXES)


@dataclass(frozen=True)
class NamedWeights:
    """Published weights resolved to a local file. ``label``: ``torchvision:ResNet50_Weights.IMAGENET1K_V2``
    or ``timm:resnet18.a1_in1k``; the rest is what the weights say about themselves."""

    path: Path
    label: str
    preprocessing: Preprocessing | None = None
    class_names: tuple[str, ...] | None = None
    num_classes: int | None = None
    warnings: tuple[str, ...] = ()
    remedy: str = "delete it and rerun with --download to fetch it again"  # what to do when the cached file is bad


def named_weights(ref: ArchRef, *, download: bool = False) -> NamedWeights:
    """The cached file of ``ref``'s published weights (CheckpointError naming the expected file if absent)."""
    if ref.weights is None:
        raise UsageError(f"--arch {ref.spec} names no published weights; add --weights NAME or pass a checkpoint file")
    if ref.family == "torchvision":
        found = _torchvision.named_weights(ref.name, ref.weights, download=download)
    else:
        found = _timm.named_weights(f"{ref.name}.{ref.weights}", download=download)
    return NamedWeights(
        path=found["path"],
        label=found["label"],
        preprocessing=found["preprocessing"],
        class_names=found["class_names"],
        num_classes=found["num_classes"],
        warnings=tuple(found["warnings"]),
        remedy=found["remedy"],
    )


def architecture_preprocessing(ref: ArchRef) -> Preprocessing | None:
    """What a timm architecture's default pretrained config says (torchvision's come with named weights only)."""
    if ref.family == "timm" and ref.weights is None:
        return _timm.preprocessing(ref.name)
    return None


@dataclass(frozen=True)
class ModelSource:
    """One way a model gets into robaudit: its name, an example command, what is read and whether it is
    data or code (docs/security.md), the ``--arch-kwargs`` it takes, and whether it is installed."""

    name: str
    example: str
    reads: str
    trust: str
    kwargs: str
    installed: bool = True
    extra: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def model_sources() -> list[ModelSource]:
    """Every model source, in the order the README lists them."""
    onnx_ok = _onnx_installed()
    return [
        ModelSource(
            "safetensors",
            "robaudit scan model.safetensors -d cifar10",
            "tensors + robaudit.* metadata (arch, arch_kwargs, classes, input shape, mean/std)",
            "data",
            "from its metadata (robaudit.arch_kwargs), or --arch-kwargs with --arch",
        ),
        ModelSource(
            "state dict",
            "robaudit scan weights.pth --arch resnet18 -d cifar10 --mean 0.4914,0.4822,0.4465 --std 0.2470,0.2435,0.2616",
            "a torch.save pickle loaded with weights_only=True (nested dicts and DataParallel prefixes unwrapped)",
            "data",
            "--arch-kwargs k=v: the architecture's parameters (robaudit list architectures -v)",
        ),
        ModelSource(
            "torchvision",
            "robaudit scan --arch torchvision:resnet50 --weights IMAGENET1K_V2 -d imagefolder:val/",
            "the published weights from $TORCH_HOME/hub/checkpoints (weights_only=True); resize/crop, mean/std and "
            "class names from the weights' transforms and meta",
            "data",
            "any keyword of torchvision.models.get_model(NAME) except weights, e.g. dropout=0.2 (torchvision:NAME with a "
            "CHECKPOINT file for your own weights)",
        ),
        ModelSource(
            "timm",
            "robaudit scan --arch timm:resnet18.a1_in1k -d imagefolder:val/",
            "the published weights from the Hugging Face cache (or --weights FILE / a CHECKPOINT); input size, crop "
            "fraction, mean/std from pretrained_cfg",
            "data",
            "the model class's keywords, e.g. drop_rate=0.1, global_pool=avg (not pretrained, checkpoint_path, in_chans)",
            installed=_timm.available(),
            extra="robaudit[timm]",
        ),
        ModelSource(
            "onnx",
            "robaudit scan model.onnx -d cifar10",
            "an ONNX graph converted to PyTorch by onnx2torch (standard operators; external data only from the "
            "model's folder)",
            "data",
            "none: the graph is the architecture (no --arch)",
            installed=onnx_ok,
            extra="robaudit[onnx]",
        ),
        ModelSource(
            "torchscript",
            "robaudit scan model.ts --trust-checkpoint -d cifar10",
            "a torch.jit.save archive",
            "code: --trust-checkpoint",
            "none: the archive is the architecture (no --arch)",
        ),
        ModelSource(
            "torch.export",
            "robaudit scan model.pt2 --trust-checkpoint -d cifar10",
            "a torch.export.save archive",
            "code: --trust-checkpoint",
            "none: the archive is the architecture (no --arch)",
        ),
        ModelSource(
            "python file",
            "robaudit scan weights.pth --arch my_nets.py:Net --arch-kwargs width=64 -d mnist",
            "your class, imported because you typed it, plus a weights file",
            "code you named",
            "the class's constructor keywords",
        ),
    ]


def _onnx_installed() -> bool:
    try:
        import onnx  # noqa: F401
        import onnx2torch  # noqa: F401
    except ImportError:
        return False
    return True


def describe(source: ModelSource) -> dict[str, Any]:
    """A source as plain strings, for listings."""
    installed = "installed" if source.installed else f"not installed: pip install '{source.extra}'"
    return {
        "name": source.name,
        "example": source.example,
        "reads": source.reads,
        "trust": source.trust,
        "kwargs": source.kwargs,
        "installed": installed,
    }
