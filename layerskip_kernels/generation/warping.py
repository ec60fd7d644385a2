"""Moved to generation.sampling (kept for one version)."""

from .sampling import warp_probs

__all__ = ["warp_probs"]
