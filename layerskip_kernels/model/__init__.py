"""Minimal Llama (config, modules, Hugging Face checkpoint loading)."""

from .config import LlamaConfig
from .llama import LlamaForCausalLM, rope_tables

__all__ = ["LlamaConfig", "LlamaForCausalLM", "rope_tables"]
