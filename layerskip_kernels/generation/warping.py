"""Logits warping shared by autoregressive and self-speculative sampling.

Draft and target distributions go through the same function, so sampling with
self-speculation has exactly the distribution of autoregressive sampling from
the warped full model.
"""

from __future__ import annotations

import torch

__all__ = ["warp_probs"]


def warp_probs(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    """logits [B, ..., V] -> fp32 probabilities [B, ..., V] after temperature, top-k, top-p.

    Each setting is a number for every row, or a tensor [B] with one value per
    row (requests with their own settings in one batch). top-k keeps the k
    largest logits (ties at the boundary all kept; 0 keeps all); top-p keeps the
    smallest set of most likely tokens whose mass reaches top_p (at least one).
    """
    x = logits.float()
    V = x.shape[-1]
    per_row = lambda t: t.to(x.device).reshape(-1, *([1] * (x.dim() - 1)))  # [B] -> [B, 1, ..., 1]
    x = x / (per_row(temperature.float()) if isinstance(temperature, torch.Tensor) else temperature)
    if isinstance(top_k, torch.Tensor):
        k = per_row(top_k.long())  # 0 keeps all: the V-th largest is the threshold
        srt = torch.sort(x, dim=-1, descending=True).values
        kth = srt.gather(-1, (torch.where(k > 0, k, V).clamp(max=V) - 1).expand(*x.shape[:-1], 1))
        x = x.masked_fill(x < kth, float("-inf"))
    elif 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    p = per_row(top_p.float()) if isinstance(top_p, torch.Tensor) else top_p
    if isinstance(p, torch.Tensor) or p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # Mass strictly before each token: a token is kept while that is < top_p.
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        drop_sorted = before >= p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs
