"""Decoding: `generate` (api), the continuous-batching `Engine` (engine), one
iteration strategy per way of decoding (iteration), the pure step functions
(steps), token choice (sampling), drafting policies (policy) and settings
(config: SamplingParams, SpeculationConfig; validation)."""

from .api import MAX_SPECULATIONS, GenerationOutput, generate
from .config import SamplingParams, SpeculationConfig
from .engine import Engine, Request, RequestOutput
from .sampling import warp_probs

__all__ = ["generate", "GenerationOutput", "MAX_SPECULATIONS", "warp_probs", "Engine", "Request", "RequestOutput",
           "SamplingParams", "SpeculationConfig"]
