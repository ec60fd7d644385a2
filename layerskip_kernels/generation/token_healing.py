"""Token healing: fix the prompt boundary before generating.

A BPE tokenizer merges text across the point where a prompt ends and the
completion begins. Our stdlib tokenizer, for instance, merges a newline with
the next line's indentation (`'\\n' + 8 spaces` is one token), so a prompt
ending in a bare newline hands the model a token it only ever saw before
column 0, and it dedents. Healing backs the prompt up over its last token and
lets the first generated token be any token whose bytes start with the removed
bytes (the removed token itself included), so the model picks the merge it
would have seen in training.

Only the first generated token is constrained and it comes from prefill, which
self-speculative and autoregressive decoding share, so healing is exact with
self-speculation by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .validation import check_first_token_ids

__all__ = ["Healing", "heal_prompt", "token_bytes", "check_first_token_ids"]


@dataclass(frozen=True)
class Healing:
    ids: list[int]  # the prompt without the backed-up token
    allowed: list[int] | None  # ids the first generated token may take (None: no healing)
    removed: bytes  # bytes of the backed-up token, which the completion starts with


def _byte_level_decoder() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet: printable bytes stand for
    themselves, the other 68 are shifted to code points 256.. in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + shift)] = b
            shift += 1
    return table


@lru_cache(maxsize=8)
def _vocab_bytes(tokenizer) -> tuple[bytes | None, ...]:
    decoder = _byte_level_decoder()
    size = tokenizer.get_vocab_size()
    special = set(tokenizer.get_added_tokens_decoder()) if hasattr(tokenizer, "get_added_tokens_decoder") else set()
    out = []
    for i in range(size):
        piece = tokenizer.id_to_token(i)
        if piece is None or i in special:
            out.append(None)  # special tokens never heal a prompt
        elif all(c in decoder for c in piece):
            out.append(bytes(decoder[c] for c in piece))
        else:  # not a byte-level piece: fall back to its decoded text
            out.append(tokenizer.decode([i]).encode("utf-8"))
    return tuple(out)


def token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The bytes a token stands for (None for special tokens)."""
    return _vocab_bytes(tokenizer)[token_id]


def heal_prompt(tokenizer, ids: list[int]) -> Healing:
    """Back `ids` (a `tokenizers.Tokenizer` encoding) up over its last token.

    A one-token prompt, or one ending in a special token, is left as it is.
    """
    ids = list(ids)
    if len(ids) < 2:
        return Healing(ids, None, b"")
    vocab = _vocab_bytes(tokenizer)
    removed = vocab[ids[-1]]
    if not removed:
        return Healing(ids, None, b"")
    allowed = [i for i, b in enumerate(vocab) if b is not None and b.startswith(removed)]
    return Healing(ids[:-1], allowed, removed)
