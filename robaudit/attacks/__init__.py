"""Attacks on pixel-space inputs [0,1]; one file per attack, registered in :data:`ATTACKS`."""

from .base import ATTACKS, Attack, AttackOutput, PassCounter

__all__ = ["ATTACKS", "Attack", "AttackOutput", "PassCounter"]
