"""Batched autoregressive and self-speculative (LayerSkip) decoding.

One iteration of self-speculation, for every active row at its own position p:

  draft    k steps of layers [0, E) + exit head on one token each, starting from
           the pending token (the last emitted one, not yet cached); layers [0, E)
           write their K/V at p .. p+k-1 and the layer-E inputs go to the exit
           query cache.
  verify   layers [0, E) once more for the last draft (position p+k), then layers
           [E, L) over the k+1 cached layer-E states in one call (S = k+1).
  accept   verify_greedy / verify_sampling; the row keeps positions p .. p+a and
           its next pending token is the correction (or bonus) token.

Every layer therefore processes each position exactly once per iteration; the
early layers' K/V written while drafting are the ones verification attends to
(the shared cache). Rejected positions are simply overwritten next iteration.

exit_layer=None runs plain autoregressive decoding through the same model
pieces and kernels: the baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .. import ops
from ..cache import ExitQueryCache, StaticKVCache
from .processors import DecodingAids, TokenHistory, check_decoding_aids
from .token_healing import check_first_token_ids
from .warping import check_sampling_args, warp_probs

__all__ = ["generate", "GenerationOutput", "MAX_SPECULATIONS"]

# The verify step runs S = k+1 queries per row; the kernels are tuned for S <= 16.
MAX_SPECULATIONS = 15


@dataclass
class GenerationOutput:
    sequences: list[list[int]]  # generated tokens per row (prompt excluded)
    stats: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- input


def _prompts_from(input_ids, attention_mask) -> list[list[int]]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        rows = input_ids.tolist()
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, "
                                 f"got {tuple(attention_mask.shape)}")
            masks = attention_mask.tolist()
            rows = [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, masks)]
        return rows
    if attention_mask is not None:
        raise ValueError("attention_mask is only accepted with a padded input_ids tensor")
    if not isinstance(input_ids, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in input_ids):
        raise ValueError("input_ids must be a LongTensor [B, T] or a list of lists of token ids")
    return [list(r) for r in input_ids]


def _validate(model, prompts, max_new_tokens, exit_layer, k, do_sample, temperature, top_k, top_p, max_cache_len):
    L, V = model.config.num_hidden_layers, model.config.vocab_size
    if not prompts:
        raise ValueError("input_ids holds no prompt")
    for b, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {b} is empty")
        if not all(isinstance(t, int) and 0 <= t < V for t in p):
            bad = next(t for t in p if not (isinstance(t, int) and 0 <= t < V))
            raise ValueError(f"prompt {b} holds token id {bad!r} outside [0, vocab_size={V})")
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if exit_layer is not None:
        if not (isinstance(exit_layer, int) and 1 <= exit_layer <= L - 1):
            raise ValueError(f"exit_layer must be an int in [1, {L - 1}] for a {L}-layer model, got {exit_layer!r}")
        if not (isinstance(k, int) and 1 <= k <= MAX_SPECULATIONS):
            raise ValueError(f"num_speculations must be an int in [1, {MAX_SPECULATIONS}], got {k!r}")
    if do_sample:
        check_sampling_args(temperature, top_k, top_p)
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > max_cache_len:
        raise ValueError(
            f"prompt length {longest} + max_new_tokens {max_new_tokens} exceeds the cache size "
            f"max_cache_len={max_cache_len}"
        )


# --------------------------------------------------------------------------- engine


class _Decoder:
    """State of one generate() call: the compacted batch of active rows."""

    def __init__(self, model, prompts, max_new_tokens, exit_layer, k, do_sample, temperature, top_k, top_p,
                 eos_ids, seed, streamer, aids=DecodingAids(), first_token_ids=None):
        self.model = model
        self.L = model.config.num_hidden_layers
        self.E = exit_layer
        self.k = k if exit_layer is not None else 0
        self.do_sample = do_sample
        self.warp = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.int64)
        self.max_new = max_new_tokens
        self.streamer = streamer
        p = model.lm_head.weight
        self.device, self.dtype = p.device, p.dtype
        self.seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else int(seed)
        self.gen = torch.Generator(device=self.device).manual_seed(self.seed)
        self.offset = 0  # Philox counter offset of verify_sampling, advanced per call

        B = len(prompts)
        self.prompts = prompts
        self.lens = [len(p) for p in prompts]
        # Slack of k+1 positions: drafts may run past the last position kept.
        T_max = max(self.lens) + max_new_tokens + self.k + 1
        self.cache = StaticKVCache.for_model(model, B, T_max)
        # Context-dependent logits processing needs every row's tokens by position.
        self.aids = aids
        self.history = TokenHistory.from_prompts(prompts, T_max, self.device) if aids.active else None
        self.first_token_ids = first_token_ids
        self.exitq = ExitQueryCache.allocate(B, self.k, model.config.hidden_size, self.dtype, self.device) if self.k else None
        # Per-iteration buffers of the speculative step, allocated once (and
        # re-sliced only when finished rows are dropped).
        V = model.config.vocab_size
        self.draft_lens = torch.zeros(B, dtype=torch.int32, device=self.device)
        self.drafts = torch.zeros(B, max(self.k, 1), dtype=torch.int64, device=self.device)
        self.draft_probs = (torch.zeros(B, self.k, V, dtype=torch.float32, device=self.device)
                            if self.k and do_sample else None)
        self.rows = list(range(B))  # original row index of each active row
        self.out: list[list[int]] = [[] for _ in range(B)]
        # row_steps: decode iterations summed over active rows; emitted: tokens
        # emitted by those iterations (the first token comes from prefill).
        self.stats = dict(drafted=0, accepted=0, steps=0, row_steps=0, emitted=0)

    # --- token choice -------------------------------------------------------------

    def _process(self, logits, ctx_len):  # [B, S, V], int [B, S] -> [B, S, V]
        """Decoding aids for logits that predict the token at position ctx_len."""
        if self.history is None:
            return logits
        return self.aids(logits, self.history, ctx_len)

    def _choose(self, logits, ctx_len):  # [B, V], [B] -> [B]
        logits = self._process(logits[:, None], ctx_len[:, None])[:, 0]
        if not self.do_sample:
            return logits.argmax(dim=-1)
        probs = warp_probs(logits, **self.warp)
        return torch.multinomial(probs, 1, generator=self.gen)[:, 0]

    def _first_token_mask(self, V: int) -> torch.Tensor:
        """bool [B, V]: the ids each row's first generated token may take (token healing)."""
        mask = torch.ones(len(self.rows), V, dtype=torch.bool)
        for b, allowed in enumerate(self.first_token_ids):
            if allowed is not None:
                mask[b] = False
                mask[b, torch.as_tensor(list(allowed), dtype=torch.int64)] = True
        return mask.to(self.device)

    def _record_pending(self) -> None:
        """The pending token sits at position seqlens (not cached yet)."""
        if self.history is not None:
            self.history.write(self.cache.seqlens, self.pending)

    # --- bookkeeping --------------------------------------------------------------

    def _emit(self, tokens: list[list[int]]) -> bool:
        """Append each active row's new tokens, honouring EOS and max_new_tokens;
        drop finished rows from the batch. Returns True while rows remain."""
        keep = []
        eos = set(self.eos.tolist())
        for i, toks in enumerate(tokens):
            r = self.rows[i]
            room = self.max_new - len(self.out[r])
            toks = toks[:room]
            done = len(toks) == room
            for j, t in enumerate(toks):
                if t in eos:
                    toks, done = toks[: j + 1], True
                    break
            self.out[r].extend(toks)
            self.stats["emitted"] += len(toks)
            if self.streamer is not None and toks:
                self.streamer(r, toks)
            if not done:
                keep.append(i)
        if len(keep) < len(self.rows):
            # Compact: finished rows stop costing compute (one gather per finish).
            idx = torch.tensor(keep, dtype=torch.int64, device=self.device)
            self.cache = self.cache.keep_rows(idx)
            self.pending = self.pending[idx]
            if self.history is not None:
                self.history = self.history.keep_rows(idx)
            if self.exitq is not None:
                self.exitq = ExitQueryCache(self.exitq.hidden[idx])
            self.draft_lens, self.drafts = self.draft_lens[idx], self.drafts[idx]
            if self.draft_probs is not None:
                self.draft_probs = self.draft_probs[idx]
            self.rows = [self.rows[i] for i in keep]
        return bool(self.rows)

    # --- phases -------------------------------------------------------------------

    def prefill(self) -> bool:
        m, B = self.model, len(self.rows)
        T = max(self.lens)
        ids = torch.zeros(B, T, dtype=torch.int64)
        for b, n in enumerate(self.lens):
            ids[b, :n] = torch.tensor(self.prompts[b])
        ids = ids.to(self.device)
        # Right-padded: each row's real tokens sit at 0..len-1; pad positions come
        # after them, so causal attention never sees a pad, and setting the row's
        # length to len makes the pad K/V dead (overwritten by later tokens).
        h = m.forward_layers(m.embed(ids), 0, self.L, self.cache)
        last = torch.tensor(self.lens, device=self.device) - 1
        logits = m.exit_head(h[torch.arange(B, device=self.device), last])  # [B, V]
        if self.first_token_ids is not None:
            logits = logits.masked_fill(~self._first_token_mask(logits.shape[-1]), float("-inf"))
        self.cache.seqlens.copy_(torch.tensor(self.lens, dtype=torch.int32))
        self.pending = self._choose(logits, self.cache.seqlens)
        self._record_pending()
        alive = self._emit([[t] for t in self.pending.tolist()])
        self.stats["emitted"] = 0
        return alive

    def step_autoregressive(self) -> bool:
        m = self.model
        h = m.forward_layers(m.embed(self.pending[:, None]), 0, self.L, self.cache)
        self.pending = self._choose(m.exit_head(h)[:, 0], self.cache.seqlens + 1)
        self.cache.seqlens += 1
        self._record_pending()
        self.stats["steps"] += 1
        self.stats["row_steps"] += len(self.rows)
        return self._emit([[t] for t in self.pending.tolist()])

    def step_speculative(self) -> bool:
        m, E, L, k = self.model, self.E, self.L, self.k
        B = len(self.rows)
        base = self.cache.seqlens
        lens = self.draft_lens  # position of the token being drafted, advanced in place
        lens.copy_(base)
        drafts, draft_probs = self.drafts, self.draft_probs
        tok = self.pending
        for i in range(k):
            h = m.forward_layers(m.embed(tok[:, None]), 0, E, self.cache, lens)
            self.exitq.hidden[:, i] = h[:, 0]
            logits = self._process(m.exit_head(h), lens[:, None] + 1)[:, 0]
            if self.do_sample:
                draft_probs[:, i] = warp_probs(logits, **self.warp)
                tok = torch.multinomial(draft_probs[:, i], 1, generator=self.gen)[:, 0]
            else:
                tok = logits.argmax(dim=-1)
            drafts[:, i] = tok
            lens += 1
            if self.history is not None:
                self.history.write(lens, tok)
        # Verify: the last draft through the early layers, then all k+1 positions
        # through the remaining layers, reading the early layers' shared cache.
        h = m.forward_layers(m.embed(tok[:, None]), 0, E, self.cache, lens)
        self.exitq.hidden[:, k] = h[:, 0]
        target_logits = m.exit_head(m.forward_layers(self.exitq.hidden, E, L, self.cache, base))  # [B, k+1, V]
        # Verify position i predicts position base+1+i from the pending token and drafts 0..i-1.
        target_logits = self._process(target_logits, base[:, None] + 1 + torch.arange(k + 1, device=self.device))
        if self.do_sample:
            target_probs = warp_probs(target_logits, **self.warp)
            n, out = ops.verify_sampling(drafts, draft_probs, target_probs, self.seed, self.offset)
            self.offset = (self.offset + 1) % 2**32
        else:
            n, out = ops.verify_greedy(drafts, target_logits)
        self.cache.seqlens += n + 1
        self.pending = out.gather(1, n.long()[:, None])[:, 0]
        self._record_pending()
        # The one host sync of the iteration: the accepted lengths decide what is
        # emitted and which rows stop.
        n_list, out_list = n.tolist(), out.tolist()
        self.stats["steps"] += 1
        self.stats["row_steps"] += B
        self.stats["drafted"] += k * B
        self.stats["accepted"] += sum(n_list)
        return self._emit([row[: a + 1] for row, a in zip(out_list, n_list)])


def generate(
    model,
    input_ids,
    max_new_tokens: int = 128,
    exit_layer: int | None = None,
    num_speculations: int = 4,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id=None,
    seed: int | None = None,
    streamer=None,
    attention_mask: torch.Tensor | None = None,
    max_cache_len: int | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    first_token_ids=None,
) -> GenerationOutput:
    """Generate up to `max_new_tokens` tokens per row.

    Args:
        model: a layerskip_kernels.LlamaForCausalLM.
        input_ids: LongTensor [B, T] (with optional attention_mask marking real
            tokens, for padded batches) or a list of token-id lists (ragged prompts).
        exit_layer: None for autoregressive decoding; E in [1, L-1] to draft with
            layers [0, E) and verify with [E, L).
        num_speculations: drafted tokens per iteration, k in [1, MAX_SPECULATIONS].
        do_sample, temperature, top_k, top_p: sampling; the same warping is applied
            to draft and target distributions.
        eos_token_id: int or list of ints; a row stops after emitting one. Defaults
            to the model config's eos_token_id.
        seed: makes sampling reproducible (None: random).
        streamer: callable streamer(row, tokens) called with each row's newly
            accepted tokens.
        max_cache_len: longest prompt + max_new_tokens allowed (default: the
            model's max_position_embeddings).
        repetition_penalty: transformers' definition over prompt + generated
            tokens (1.0: off). Applied to draft and target logits alike, each
            against its own context, so self-speculation stays exact.
        no_repeat_ngram_size: ban tokens that would repeat an n-gram of prompt +
            generated tokens (0: off); same exactness as above.
        first_token_ids: per row, None or the token ids the first generated
            token may take (token healing: see generation.token_healing).

    Returns:
        GenerationOutput(sequences, stats): per-row generated tokens (prompt
        excluded) and drafted, accepted, acceptance_rate, tokens_per_step, time_s,
        tokens_per_s.
    """
    prompts = _prompts_from(input_ids, attention_mask)
    cfg = model.config
    max_cache_len = cfg.max_position_embeddings if max_cache_len is None else max_cache_len
    _validate(model, prompts, max_new_tokens, exit_layer, num_speculations, do_sample, temperature, top_k, top_p,
              max_cache_len)
    check_decoding_aids(repetition_penalty, no_repeat_ngram_size)
    aids = DecodingAids(float(repetition_penalty), no_repeat_ngram_size)
    check_first_token_ids(first_token_ids, len(prompts), cfg.vocab_size)
    if eos_token_id is None:
        eos_token_id = cfg.eos_token_id
    eos_ids = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))

    t0 = time.perf_counter()
    with torch.inference_mode():
        dec = _Decoder(model, prompts, max_new_tokens, exit_layer, num_speculations, do_sample, temperature, top_k,
                       top_p, eos_ids, seed, streamer, aids, first_token_ids)
        alive = dec.prefill()
        step = dec.step_autoregressive if exit_layer is None else dec.step_speculative
        while alive:
            alive = step()
    elapsed = time.perf_counter() - t0

    total = sum(len(s) for s in dec.out)
    s = dec.stats
    stats = dict(
        drafted=s["drafted"],
        accepted=s["accepted"],
        acceptance_rate=s["accepted"] / s["drafted"] if s["drafted"] else None,
        # Tokens emitted per row per decode iteration (1.0 for autoregressive).
        tokens_per_step=s["emitted"] / s["row_steps"] if s["row_steps"] else None,
        steps=s["steps"],
        new_tokens=total,
        time_s=elapsed,
        tokens_per_s=total / elapsed if elapsed > 0 else None,
    )
    return GenerationOutput(sequences=dec.out, stats=stats)
