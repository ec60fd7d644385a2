"""Token choice on logits: warping, decoding aids, random streams.

Everything an iteration does to a row of logits between the model and the
acceptance op lives here, as small objects chosen once when an engine is built
(generation.iteration composes them; none tests a mode flag per call):

  warping        `warp_probs`: temperature, top-k, top-p. Draft and target
                 distributions go through the same function, so sampling with
                 self-speculation has exactly the distribution of
                 autoregressive sampling from the warped full model.
  decoding aids  `DecodingAids` (repetition penalty, no-repeat n-grams, with
                 transformers' definitions) over a `TokenHistory`; at run time
                 `NoAids` or `HistoryAids` (`make_aids`).
  token choice   `Greedy` (argmax; greedy acceptance) or `Sampler` (per-row
                 warping settings; speculative sampling acceptance).
  random streams `SharedStream` (one generator and one verify_sampling call for
                 the batch: `generate(seed=S)`) or `RowStreams` (each row its
                 request's own seed and Philox offset, so its tokens do not
                 depend on its neighbours: the Engine API).

Self-speculation stays exact with the aids because every logit row is
processed against its own context: a draft step's row against the tokens up to
the position it predicts, and verify position i against the accepted tokens
plus drafts 0..i-1. The history is a device buffer written by position (like
the KV cache), so each row of logits only needs the length of its context;
processing is batched on the device with no host read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops

__all__ = ["warp_probs", "DecodingAids", "TokenHistory", "GrowingContext", "NoContext",
           "NoAids", "HistoryAids", "make_aids", "Greedy", "Sampler", "SharedStream", "RowStreams",
           "make_chooser"]

# Beyond float32's range a temperature flattens logits to zero all the same.
_MAX_TEMPERATURE = torch.finfo(torch.float32).max


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
        V = logits.shape[-1]
        return self.apply(logits, self.seen(history.ids, ctx_len, V), self.banned(history.ids, ctx_len, V))

    def apply(self, logits: torch.Tensor, seen, banned) -> torch.Tensor:
        """logits [B, S, V] with the masks of their contexts (`seen`, `banned`:
        bool [B, S, V], or None for an aid that is off) -> processed logits."""
        out = logits
        if seen is not None:
            p = self.repetition_penalty
            penalized = torch.where(out < 0, out * p, out / p)
            out = torch.where(seen, penalized, out)
        if banned is not None:
            out = out.masked_fill(banned, float("-inf"))
        return out

    def seen(self, ids: torch.Tensor, ctx_len: torch.Tensor, V: int):
        """bool [B, S, V]: the tokens of each context ids[b, :ctx_len[b, s]] (None: no penalty)."""
        if self.repetition_penalty == 1.0:
            return None
        B, T = ids.shape
        S = ctx_len.shape[1]
        in_ctx = torch.arange(T, device=ids.device)[None, None, :] < ctx_len[:, :, None]
        # Column V collects the positions outside the context.
        seen = torch.zeros(B, S, V + 1, dtype=torch.bool, device=ids.device)
        seen.scatter_(2, torch.where(in_ctx, ids[:, None, :].expand(B, S, T), V), True)
        return seen[..., :V]

    def banned(self, ids: torch.Tensor, ctx_len: torch.Tensor, V: int):
        """bool [B, S, V]: the tokens that would repeat an n-gram of each context (None: no n-gram ban)."""
        if self.no_repeat_ngram_size <= 0:
            return None
        return self._banned_ngrams(ids, ctx_len, self.no_repeat_ngram_size, V)

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


class GrowingContext:
    """The decoding aids inside a greedy step function (generation.steps): the
    context of every row grows by one draft at a time, from the pending token
    at `base` (context history[:, :base + 1]) to the k-th draft.

    Draft step i and verify position i predict the same position base + 1 + i
    from the same context, so the masks of each context are computed once, by
    the draft step, and reused by the verify pass. The repetition penalty's
    token set grows by one scatter per draft; the n-gram ban is recomputed per
    context (its suffix changes). Each draft is written into the history at its
    position (scratch above the verified length, like the KV cache). Every
    logit row goes through the same DecodingAids.apply as autoregressive
    decoding, so greedy self-speculation stays exact."""

    def __init__(self, aids: DecodingAids, ids: torch.Tensor, base: torch.Tensor, V: int):
        self.aids, self.ids, self.V = aids, ids, V  # ids: int64 [n, T_max], written in place
        self.ctx = base.long()[:, None] + 1  # [n, 1]: the current context's length
        self.seen = aids.seen(ids, self.ctx, V)  # [n, 1, V] or None
        self.masks: list[tuple] = []  # (seen, banned) of each context so far

    def draft(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [n, V] predicting the position after the current context."""
        seen, banned = self._new_context()
        return self.aids.apply(logits[:, None], seen, banned)[:, 0]

    def _new_context(self) -> tuple:
        masks = (self.seen, self.aids.banned(self.ids, self.ctx, self.V))
        self.masks.append(masks)
        return masks

    def append(self, tokens: torch.Tensor) -> None:
        """The draft just chosen [n] extends every row's context."""
        self.ids.scatter_(1, self.ctx, tokens[:, None])
        self.ctx = self.ctx + 1
        if self.seen is not None:
            self.seen = self.seen.scatter(2, tokens[:, None, None], True)

    def verify(self, logits: torch.Tensor) -> torch.Tensor:
        """Verify logits [n, k+1, V]: position i against context i (the last one, all k drafts, new here)."""
        self._new_context()
        seen = None if self.seen is None else torch.cat([m[0] for m in self.masks], dim=1)
        banned = None if self.masks[0][1] is None else torch.cat([m[1] for m in self.masks], dim=1)
        return self.aids.apply(logits, seen, banned)


class NoContext:
    """GrowingContext without decoding aids: logits pass through."""

    def draft(self, logits):
        return logits

    def append(self, tokens) -> None:
        pass

    def verify(self, logits):
        return logits


# --------------------------------------------------------------------------- decoding aids at run time


class NoAids:
    """No decoding aids: logits pass through unchanged and nothing is recorded."""

    def allocate(self, n: int, T_max: int, device) -> None:
        pass

    def prefill(self, logits, ids, rows: slice, lens):
        return logits

    def process(self, logits, ctx_len):
        return logits

    def draft(self, logits, pos):
        return logits

    def process_verify(self, logits, base):
        return logits

    def record(self, pos, tokens) -> None:
        pass

    def record_prefill(self, rows: slice, lens, tokens) -> None:
        pass

    def step_args(self) -> tuple:
        """The trailing arguments of a greedy step function that applies the aids
        inside it (generation.steps: `aids`, `history`); none without aids."""
        return ()


class HistoryAids(NoAids):
    """The aids over every row's tokens by position (TokenHistory [n, T_max])."""

    def __init__(self, aids: DecodingAids):
        self.aids = aids

    def allocate(self, n: int, T_max: int, device) -> None:
        self.history = TokenHistory(torch.zeros(n, T_max, dtype=torch.int64, device=device))

    def prefill(self, logits, ids, rows: slice, lens):
        """logits [m, V] of the prompts ids [m, T] (lengths lens [m]) prefilled into `rows`."""
        self.history.ids[rows, : ids.shape[1]] = ids
        return self.aids(logits[:, None], TokenHistory(self.history.ids[rows]), lens[:, None])[:, 0]

    def process(self, logits, ctx_len):
        """logits [n, S, V] predicting positions ctx_len [n, S]."""
        return self.aids(logits, self.history, ctx_len)

    def draft(self, logits, pos):
        """A draft step's logits [n, V] for the token at pos + 1."""
        return self.process(logits[:, None], pos[:, None] + 1)[:, 0]

    def process_verify(self, logits, base):
        """Verify logits [n, S, V]: position i predicts base+1+i from the pending token and drafts 0..i-1."""
        return self.process(logits, base[:, None] + 1 + torch.arange(logits.shape[1], device=logits.device))

    def record(self, pos, tokens) -> None:
        self.history.write(pos, tokens)

    def record_prefill(self, rows: slice, lens, tokens) -> None:
        self.history.ids[rows].scatter_(1, lens.long()[:, None], tokens[:, None])

    def step_args(self) -> tuple:
        # The step writes its drafts into the history (scratch above each row's
        # verified length, like the KV cache); the loop records the pending token.
        return (self.aids, self.history.ids)


class SubsetDraftAids(HistoryAids):
    """HistoryAids for a draft head over a vocabulary subset: the aids may ban
    every token of the subset, and such a row drafts from a uniform q instead
    (any q is a valid proposal; verification decides)."""

    def draft(self, logits, pos):
        logits = super().draft(logits, pos)
        return torch.where(torch.isfinite(logits).any(-1, keepdim=True), logits, 0.0)


def make_aids(aids: DecodingAids, draft_subset: bool) -> NoAids:
    if not aids.active:
        return NoAids()
    return SubsetDraftAids(aids) if draft_subset else HistoryAids(aids)


# --------------------------------------------------------------------------- random streams


class SharedStream:
    """One generator and one Philox (seed, offset) for the whole batch: fully
    batched, reproducible for the same prompts and batch (generate(seed=S))."""

    def __init__(self, seed: int, device):
        self.seed, self.offset = seed, 0
        self.gen = torch.Generator(device=device).manual_seed(seed % 2**64)

    def allocate(self, n: int, device) -> None:
        pass

    def assign(self, slot: int, seed: int) -> None:
        pass

    def release(self, slot: int) -> None:
        pass

    def sample_rows(self, probs, rows: slice):
        return torch.multinomial(probs, 1, generator=self.gen)[:, 0]

    def verify(self, drafts, draft_probs, target_probs, draft_lens):
        out = ops.verify_sampling(drafts, draft_probs, target_probs, self.seed, self.offset, draft_lens=draft_lens)
        self.offset = (self.offset + 1) % 2**32
        return out

    def sample(self, probs):
        """One token per slot [n] from probs [n, V]."""
        return torch.multinomial(probs, 1, generator=self.gen)[:, 0]


_GOLDEN = 0x9E3779B97F4A7C15  # odd 64-bit constant: distinct offsets give distinct generator seeds


class RowStreams:
    """Each row draws from its request's own generator, and verify_sampling runs
    on the row alone with its request's seed and Philox offset, so a request's
    tokens depend on its seed only (a small loop over rows per step).

    After each iteration a row's generator restarts from (seed, offset): with
    adaptive drafting the batch runs as many draft steps as its longest-drafting
    row, and a row that stopped earlier still draws (discarded) tokens; the
    restart keeps its next iteration's draws independent of how many that was."""

    def allocate(self, n: int, device) -> None:
        self.device = device
        self.gens: list[torch.Generator | None] = [None] * n  # None: a free slot
        self.seeds = [0] * n
        self.offsets = [0] * n

    def assign(self, slot: int, seed: int) -> None:
        self.gens[slot] = torch.Generator(device=self.device).manual_seed(seed % 2**64)
        self.seeds[slot], self.offsets[slot] = seed, 0

    def release(self, slot: int) -> None:
        self.gens[slot] = None

    def sample_rows(self, probs, rows: slice):
        return torch.stack([torch.multinomial(probs[i], 1, generator=self.gens[s])[0]
                            for i, s in enumerate(range(rows.start, rows.stop))])

    def sample(self, probs):
        tok = probs.argmax(dim=-1)  # free slots: any token
        for s, g in enumerate(self.gens):
            if g is not None:
                tok[s] = torch.multinomial(probs[s], 1, generator=g)[0]
        return tok

    def verify(self, drafts, draft_probs, target_probs, draft_lens):
        n = torch.zeros(len(self.gens), dtype=torch.int32, device=self.device)
        out = torch.zeros(len(self.gens), drafts.shape[1] + 1, dtype=torch.int64, device=self.device)
        for s, g in enumerate(self.gens):
            if g is None:
                continue
            row = slice(s, s + 1)
            n[row], out[row] = ops.verify_sampling(drafts[row], draft_probs[row], target_probs[row], self.seeds[s],
                                                   self.offsets[s],
                                                   draft_lens=None if draft_lens is None else draft_lens[row])
            self.offsets[s] = (self.offsets[s] + 1) % 2**32
            g.manual_seed((self.seeds[s] + self.offsets[s] * _GOLDEN) % 2**64)
        return n, out


# --------------------------------------------------------------------------- token choice


class Greedy:
    """The argmax (ties: lowest id); greedy acceptance."""

    def allocate(self, n: int, k: int, V: int, device) -> None:
        pass

    def admit(self, s0: int, requests) -> None:
        pass

    def release(self, slot: int) -> None:
        pass

    def first(self, logits, rows: slice):
        """The first token of prompts prefilled into `rows`, from logits [m, V]."""
        return logits.argmax(dim=-1)

    def choose(self, logits):
        """[n, V] -> (tokens [n], None)."""
        return logits.argmax(dim=-1), None

    def draft(self, logits, i: int):
        """Draft token i from logits [n, V]: (tokens [n], warped probabilities or None)."""
        return logits.argmax(dim=-1), None

    def confidence(self, logits, probs):
        """The draft's probability of its token, [n] (adaptive drafting's stop)."""
        return torch.softmax(logits.float(), dim=-1).amax(dim=-1)

    def accept(self, drafts, target_logits, draft_lens):
        """(num_accepted [n], out_tokens [n, S]) of drafts [n, S-1] against target_logits [n, S, V]."""
        return ops.verify_greedy(drafts, target_logits, draft_lens=draft_lens)


class Sampler(Greedy):
    """Each slot's own temperature/top-k/top-p; draws from a random stream
    (SharedStream or RowStreams); lossless speculative sampling acceptance."""

    def __init__(self, stream):
        self.stream = stream

    def allocate(self, n: int, k: int, V: int, device) -> None:
        self.temperature = torch.ones(n, device=device)
        self.top_k = torch.zeros(n, dtype=torch.int64, device=device)
        self.top_p = torch.ones(n, device=device)
        self.draft_probs = torch.zeros(n, k, V, dtype=torch.float32, device=device) if k else None
        self.stream.allocate(n, device)

    def admit(self, s0: int, requests) -> None:
        for i, r in enumerate(requests):
            self.temperature[s0 + i] = min(r.temperature, _MAX_TEMPERATURE)
            self.top_k[s0 + i], self.top_p[s0 + i] = r.top_k, r.top_p
            self.stream.assign(s0 + i, r.seed)

    def release(self, slot: int) -> None:
        self.stream.release(slot)

    def first(self, logits, rows: slice):
        probs = warp_probs(logits, self.temperature[rows], self.top_k[rows], self.top_p[rows])
        return self.stream.sample_rows(probs, rows)

    def choose(self, logits):
        probs = warp_probs(logits, self.temperature, self.top_k, self.top_p)
        return self.stream.sample(probs), probs

    def draft(self, logits, i: int):
        tok, probs = self.choose(logits)
        self.draft_probs[:, i] = probs
        return tok, probs

    def confidence(self, logits, probs):
        return probs.amax(dim=-1)

    def accept(self, drafts, target_logits, draft_lens):
        target_probs = warp_probs(target_logits, self.temperature, self.top_k, self.top_p)
        return self.stream.verify(drafts, self.draft_probs[:, : drafts.shape[1]], target_probs, draft_lens)


def make_chooser(do_sample: bool, seed: int | None, device) -> Greedy:
    """Greedy, or a Sampler with one stream for the batch (seed) or one per request (None)."""
    if not do_sample:
        return Greedy()
    return Sampler(SharedStream(seed, device) if seed is not None else RowStreams())
