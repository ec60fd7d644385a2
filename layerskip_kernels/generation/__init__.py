"""Autoregressive and self-speculative generation loops, logits warping, stopping."""

from .engine import MAX_SPECULATIONS, GenerationOutput, generate
from .scheduler import Engine, Request, RequestOutput
from .warping import warp_probs

__all__ = ["generate", "GenerationOutput", "MAX_SPECULATIONS", "warp_probs", "Engine", "Request", "RequestOutput"]
