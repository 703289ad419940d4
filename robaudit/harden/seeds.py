"""Seeds of ``robaudit harden``'s random streams, derived from ``--seed`` and a tag.

One 63-bit seed per (run seed, tag) from SHA-256, so each stream (data order, device noise,
evaluation, each DDP rank's step) is independent of the others and of the process count.
A module of its own so that the trainer and the DDP helpers both use it without importing each other.
"""

from __future__ import annotations

import hashlib

__all__ = ["seed_for"]


def seed_for(seed: int, tag: str) -> int:
    """The seed of stream ``tag`` in a run seeded ``seed`` (a non-negative int below 2⁶³)."""
    digest = hashlib.sha256(f"harden:{seed}:{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
