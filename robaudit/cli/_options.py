"""Command-line options that ``scan`` and ``harden`` share, declared once (one help text, one default).

Typer reads an option's declaration when it builds each command, so the same ``typer.Option`` can be
the default of a parameter in several commands.
"""

from __future__ import annotations

import typer

DATA_DIR = typer.Option(None, "--data-dir", help="Where the dataset lives (also $ROBAUDIT_DATA).")
DOWNLOAD = typer.Option(False, "--download", help="Download the dataset or the published weights if missing (needs internet).")
IMAGE_SIZE = typer.Option(None, "--image-size", help="imagefolder: resize short side + centre crop.")
ARCH = typer.Option(
    None,
    "--arch",
    help="Architecture: a built-in name, torchvision:NAME[:WEIGHTS], timm:NAME[.TAG], or path/to/net.py:Class.",
)
WEIGHTS = typer.Option(
    None,
    "--weights",
    help="Published weights of a torchvision:/timm: --arch from the local cache (IMAGENET1K_V2, DEFAULT; a timm tag), or a weights file.",
)
ARCH_KWARGS = typer.Option(None, "--arch-kwargs", help="JSON object or k=v,k=v for the architecture.")
NUM_CLASSES = typer.Option(None, "--num-classes", help="Classes of the model (default: metadata, else the dataset's).")
INPUT_SHAPE = typer.Option(None, "--input-shape", help="C,H,W the model expects (default: metadata, else the dataset's).")
MEAN = typer.Option(None, "--mean", help="Per-channel normalization mean the model expects, e.g. 0.4914,0.4822,0.4465.")
STD = typer.Option(None, "--std", help="Per-channel normalization std.")
TRUST_CHECKPOINT = typer.Option(
    False,
    "--trust-checkpoint",
    help="Load a checkpoint that can run code: TorchScript, torch.export (.pt2), or a pickle of arbitrary Python objects. Only for files you trust (docs/security.md).",
)
DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")
