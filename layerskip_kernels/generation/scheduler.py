"""Moved: the engine is generation.engine, its iterations generation.iteration
(this module re-exports for one version)."""

from .engine import Engine, Request, RequestOutput

__all__ = ["Engine", "Request", "RequestOutput"]
