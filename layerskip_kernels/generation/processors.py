"""Decoding aids that depend on the text so far: repetition penalty and
no-repeat n-grams, with transformers' definitions
(`RepetitionPenaltyLogitsProcessor`, `NoRepeatNGramLogitsProcessor`).

Self-speculation stays exact with them because every logit row is processed
against its own context: a draft step's row against the tokens up to the
position it predicts, and verify position i against the accepted tokens plus
drafts 0..i-1. The engine keeps all tokens in a device buffer written by
position (`TokenHistory`, like the KV cache), so each row of logits only needs
the length of its context; processing is batched on the device with no host
read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DecodingAids", "TokenHistory", "check_decoding_aids"]


def check_repetition_penalty(value, name: str = "repetition_penalty") -> None:
    """ValueError naming `name` unless value is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < float(value) < float("inf")):
        raise ValueError(f"{name} must be a finite number > 0 (1.0 disables it), got {value!r}")


def check_decoding_aids(repetition_penalty, no_repeat_ngram_size) -> None:
    check_repetition_penalty(repetition_penalty)
    if isinstance(no_repeat_ngram_size, bool) or not isinstance(no_repeat_ngram_size, int) \
            or no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be an int >= 0 (0 disables it), got {no_repeat_ngram_size!r}")


@dataclass
class TokenHistory:
    """Every row's tokens by position: prompt, emitted tokens, and the current
    drafts (scratch above the verified length, overwritten like the KV cache)."""

    ids: torch.Tensor  # int64 [B, T_max]

    def write(self, pos: torch.Tensor, tokens: torch.Tensor) -> None:
        """tokens int64 [B] at positions pos [B] (one per row)."""
        self.ids.scatter_(1, pos.long()[:, None], tokens[:, None])


@dataclass(frozen=True)
class DecodingAids:
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    @property
    def active(self) -> bool:
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0

    def __call__(self, logits: torch.Tensor, history: TokenHistory, ctx_len: torch.Tensor) -> torch.Tensor:
        """logits [B, S, V] -> processed logits; row (b, s) predicts the token at
        position ctx_len[b, s] from history.ids[b, :ctx_len[b, s]]."""
        if not self.active:
            return logits
        B, S, V = logits.shape
        T = history.ids.shape[1]
        ids = history.ids[:, None, :].expand(B, S, T)  # [B, S, T]
        in_ctx = torch.arange(T, device=logits.device)[None, None, :] < ctx_len[:, :, None]
        out = logits
        if self.repetition_penalty != 1.0:
            # Column V collects the positions outside the context.
            seen = torch.zeros(B, S, V + 1, dtype=torch.bool, device=logits.device)
            seen.scatter_(2, torch.where(in_ctx, ids, V), True)
            seen = seen[..., :V]
            p = self.repetition_penalty
            penalized = torch.where(out < 0, out * p, out / p)
            out = torch.where(seen, penalized, out)
        n = self.no_repeat_ngram_size
        if n > 0:
            out = out.masked_fill(self._banned_ngrams(history.ids, ctx_len, n, V), float("-inf"))
        return out

    @staticmethod
    def _banned_ngrams(ids: torch.Tensor, ctx_len: torch.Tensor, n: int, V: int) -> torch.Tensor:
        """bool [B, S, V]: tokens that would repeat an n-gram of the context."""
        B, T = ids.shape
        S = ctx_len.shape[1]
        banned = torch.zeros(B, S, V + 1, dtype=torch.bool, device=ids.device)
        if T < n:
            return banned[..., :V]
        windows = ids.unfold(1, n, 1)  # [B, W, n], W = T - n + 1: window j is ids[j : j + n]
        W = windows.shape[1]
        # The n-1 tokens before each predicted position: ids[t-n+1 : t].
        offs = torch.arange(n - 1, device=ids.device)
        suffix_pos = (ctx_len[:, :, None] - (n - 1) + offs).clamp(min=0)  # [B, S, n-1]
        suffix = ids.gather(1, suffix_pos.reshape(B, -1)).reshape(B, S, n - 1)
        match = (windows[:, None, :, : n - 1] == suffix[:, :, None, :]).all(dim=-1)  # [B, S, W]
        # A window counts when it lies inside the context, and only once the
        # context has n-1 tokens (transformers: cur_len + 1 >= n).
        j = torch.arange(W, device=ids.device)[None, None, :]
        match &= (j + n <= ctx_len[:, :, None]) & (ctx_len[:, :, None] >= n - 1)
        nxt = windows[:, None, :, n - 1].expand(B, S, W)
        banned.scatter_(2, torch.where(match, nxt, V), True)
        return banned[..., :V]
