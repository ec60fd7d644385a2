"""Continuous batching: any number of requests decoded in a fixed set of cache slots.

`Engine` is the loop that owns the batch. It holds one static KV cache of
`max_batch_size` rows ("slots"). Each waiting request is prefilled alone into a
free slot (its rows of the cache are a view: no other row is read, copied or
written), then takes part in every batched decode iteration, autoregressive or
self-speculative, until it stops (EOS, its own max_new_tokens). Its slot is
refilled at once by the next waiting request, so a batch never idles on
finished rows while work is queued. A free slot still runs through the batched
step on a dummy token at position 0 (its results are discarded): shapes never
change as requests come and go, which is what compiled and graph-captured
steps need.

The interface follows what serving users know from vLLM's `LLMEngine`
(`add_request`, then run to completion, outputs per request in arrival order);
`generate()` is the transformers-style entry point built on it.

Sampling has two modes. By default each request is reproducible whatever else
is in the batch: it draws its draft and first tokens from its own
torch.Generator and its acceptance randomness from `verify_sampling` called on
its row alone with its own seed and Philox offset, so its tokens depend on its
seed only (a small loop over rows per step). `Engine(seed=S)` instead draws
for the whole batch from one generator and one `verify_sampling` call per step
(what `generate(seed=S)` uses: fully batched, reproducible for the same
prompts and batch).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import ops
from ..cache import ExitQueryCache, StaticKVCache
from .policy import make_policy
from .processors import DecodingAids, TokenHistory
from .draft_head import DraftHead, check_draft_quantization
from .draft_vocab import check_draft_vocab
from .steps import StepFunctions, cache_shape, packed
from .token_healing import check_first_token_ids
from .validation import validate_generate_args
from .warping import warp_probs

__all__ = ["Engine", "Request", "RequestOutput"]


@dataclass
class Request:
    """One prompt and its own stopping and sampling settings (already validated)."""

    prompt: list[int]
    max_new_tokens: int
    eos_ids: frozenset[int]
    seed: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    streamer: Callable[[list[int]], None] | None = None
    first_token_ids: list[int] | None = None  # token healing: allowed first tokens


@dataclass
class RequestOutput:
    request_id: int
    tokens: list[int]  # generated tokens (prompt excluded)
    stats: dict = field(default_factory=dict)


class _Active:
    """Host-side state of a request that holds a slot."""

    def __init__(self, rid: int, req: Request, device, t_start: float, own_rng: bool):
        self.rid, self.req = rid, req
        self.out: list[int] = []
        self.gen = torch.Generator(device=device).manual_seed(req.seed % 2**64) if own_rng else None
        self.offset = 0  # Philox counter offset of this request's verify_sampling calls
        self.drafted = self.accepted = self.iterations = self.emitted = 0
        self.t_admit = time.perf_counter()
        self.t_start = t_start
        self.t_first: float | None = None

    def output(self, t_done: float) -> RequestOutput:
        n = len(self.out)
        stats = dict(
            new_tokens=n,
            drafted=self.drafted,
            accepted=self.accepted,
            acceptance_rate=self.accepted / self.drafted if self.drafted else None,
            iterations=self.iterations,
            tokens_per_step=self.emitted / self.iterations if self.iterations else None,
            time_to_first_token_s=self.t_first - self.t_start,
            latency_s=t_done - self.t_start,
            tokens_per_s=n / (t_done - self.t_admit) if t_done > self.t_admit else None,
        )
        return RequestOutput(self.rid, list(self.out), stats)


class Engine:
    """Decode queued requests with at most `max_batch_size` rows in flight.

    Args:
        model: a layerskip_kernels.LlamaForCausalLM.
        max_batch_size: cache slots (active rows) at once.
        exit_layer: None (autoregressive) or E to draft with layers [0, E).
        num_speculations: k drafted tokens per iteration.
        do_sample: sampling (with each request's temperature/top-k/top-p/seed)
            or greedy for every request.
        aids: repetition penalty / no-repeat n-grams for every request.
        seed: None (each request samples from its own seed) or one seed for the
            whole batch's random stream (see the module docstring).
        compile: run the model passes of each step compiled (generation.steps):
            the slot count and cache length are then rounded up to powers of two
            (shape buckets) so that graphs are shared between runs and engines.
        speculation: "static" (exit layer and k fixed), "adaptive" (per-row
            draft lengths, confidence stop, exit layer chosen per iteration; k is
            then the most drafts per iteration), or a policy object
            (generation.policy).
        draft_vocab: None, or distinct token ids the draft head scores
            (generation.draft_vocab); verification scores every token.
        draft_quantization: None, or "int8": the draft scores with an int8
            copy of the LM head (generation.draft_head); verification scores
            with the model's own.

    Arguments are validated by the caller (`generate` or `validation`).
    """

    def __init__(self, model, max_batch_size: int, exit_layer: int | None = None, num_speculations: int = 4,
                 do_sample: bool = False, aids: DecodingAids = DecodingAids(), seed: int | None = None,
                 compile: bool = False, speculation="static", draft_vocab: torch.Tensor | None = None,
                 draft_quantization: str | None = None):
        draft_vocab = check_draft_vocab(draft_vocab, model.config.vocab_size)  # before anything is built
        draft_quantization = check_draft_quantization(draft_quantization)
        self.model = model
        self.L = model.config.num_hidden_layers
        self.E = exit_layer
        self.k = num_speculations if exit_layer is not None else 0
        self.do_sample = do_sample
        self.aids = aids
        self.max_batch_size = max_batch_size
        p = model.lm_head.weight
        self.device, self.dtype = p.device, p.dtype
        self.steps = StepFunctions(compile, self.device)
        self.policy = make_policy(speculation, model, exit_layer, self.k) if exit_layer is not None else None
        own_head = draft_vocab is None and draft_quantization is None
        self.draft_head = None if own_head or exit_layer is None else DraftHead(model, draft_vocab, draft_quantization)
        self.shared_seed = seed
        self.shared_rng = None if seed is None else torch.Generator(device=self.device).manual_seed(seed % 2**64)
        self.shared_offset = 0
        self.waiting: deque[tuple[int, Request]] = deque()
        self.next_id = 0
        self.stats = dict(drafted=0, accepted=0, steps=0, row_steps=0, emitted=0, new_tokens=0, prefill_s=0.0,
                          iterations_by_exit={}, draft_steps_by_exit={})

    def add_request(self, request: Request) -> int:
        """Queue an already-validated request; returns its id (outputs come in id order)."""
        rid = self.next_id
        self.next_id += 1
        self.waiting.append((rid, request))
        return rid

    def add(self, prompt, max_new_tokens: int = 128, eos_token_id=None, temperature: float = 1.0, top_k: int = 0,
            top_p: float = 1.0, seed: int | None = None, streamer=None, max_cache_len: int | None = None,
            first_token_ids=None) -> int:
        """Validate and queue one request. A bad request raises ValueError here,
        naming the argument; requests queued before and after it are unaffected.
        `streamer(tokens)` receives this request's new tokens."""
        a = validate_generate_args(
            self.model, [prompt], None, max_new_tokens=max_new_tokens, exit_layer=self.E,
            num_speculations=self.k or 1, do_sample=self.do_sample, temperature=temperature, top_k=top_k,
            top_p=top_p, eos_token_id=eos_token_id, seed=seed, streamer=streamer, max_cache_len=max_cache_len)
        check_first_token_ids(None if first_token_ids is None else [first_token_ids], 1, self.model.config.vocab_size)
        seed = int(torch.randint(0, 2**62, ()).item()) if a.seed is None else a.seed
        return self.add_request(Request(a.prompts[0], a.max_new_tokens, frozenset(a.eos_ids), seed, a.temperature,
                                        a.top_k, a.top_p, streamer, first_token_ids))

    # --- run ------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self) -> list[RequestOutput]:
        """Decode every waiting request; outputs in the order they were added."""
        if not self.waiting:
            return []
        t_start = time.perf_counter()
        self.usable = min(self.max_batch_size, len(self.waiting))  # slots that take requests
        # Slack of k+1 positions: drafts may run past the last position kept.
        T_max = max(len(r.prompt) + r.max_new_tokens for _, r in self.waiting) + self.k + 1
        n_slots, T_max = cache_shape(self.usable, T_max, self.steps.compile)
        self._allocate(n_slots, T_max)
        self.slots: list[_Active | None] = [None] * n_slots
        done: dict[int, RequestOutput] = {}
        self._admit(done, t_start)
        step = self._step_autoregressive if self.E is None else self._step_speculative
        while any(a is not None for a in self.slots):
            # Lengths and tokens are the engine's own (validated at admission):
            # the ops skip their value checks, each a host sync per layer on GPU.
            with ops.trusted_inputs():
                tokens = step()
            self._emit_all(tokens, done)
            self._admit(done, t_start)
        return [done[rid] for rid in sorted(done)]

    def _allocate(self, n: int, T_max: int) -> None:
        m, dev = self.model, self.device
        self.cache = StaticKVCache.for_model(m, n, T_max)
        m.rope(T_max, dev)  # grown here, never inside a compiled step
        m.refresh_decode_weights()  # likewise (model/linear.py)
        if self.steps.compile and dev.type == "cuda":
            # Written in place by the captured graphs: static inputs (no copy per
            # replay); a new cache re-records the CUDA graph, it does not recompile.
            for t in (self.cache.k, self.cache.v):
                torch._dynamo.mark_static_address(t, guard=False)
        self.alive = torch.zeros(n, dtype=torch.bool, device=dev)
        self.pending = torch.zeros(n, dtype=torch.int64, device=dev)
        self.history = TokenHistory(torch.zeros(n, T_max, dtype=torch.int64, device=dev)) if self.aids.active else None
        if self.k:
            V, H = m.config.vocab_size, m.config.hidden_size
            self.exitq = ExitQueryCache.allocate(n, self.k, H, self.dtype, dev)
            self.draft_pos = torch.zeros(n, dtype=torch.int32, device=dev)
            self.drafts = torch.zeros(n, self.k, dtype=torch.int64, device=dev)
            self.draft_lens = torch.zeros(n, dtype=torch.int32, device=dev)
            self.drafting = torch.zeros(n, dtype=torch.bool, device=dev)
            self.draft_probs = torch.zeros(n, self.k, V, dtype=torch.float32, device=dev) if self.do_sample else None
        if self.do_sample:  # each slot's own warping settings
            self.temperature = torch.ones(n, device=dev)
            self.top_k = torch.zeros(n, dtype=torch.int64, device=dev)
            self.top_p = torch.ones(n, device=dev)

    # --- admission and emission -----------------------------------------------------

    def _admit(self, done: dict, t_start: float) -> None:
        """Prefill waiting requests into free slots: a run of consecutive free
        slots in one batched call (the whole batch at the start), each writing
        only its own rows of the cache."""
        while self.waiting:
            free = [s for s, a in enumerate(self.slots[: self.usable]) if a is None]
            if not free:
                return
            run = [free[0]]
            while len(run) < len(self.waiting) and run[-1] + 1 < self.usable and self.slots[run[-1] + 1] is None:
                run.append(run[-1] + 1)
            acts = []
            for s in run:
                if self.policy is not None:
                    self.policy.reset_row(s)
                rid, req = self.waiting.popleft()
                acts.append(_Active(rid, req, self.device, t_start, own_rng=self.shared_rng is None))
                self.slots[s] = acts[-1]
            t0 = time.perf_counter()
            first = self._prefill(run[0], acts)
            now = time.perf_counter()
            self.stats["prefill_s"] += now - t0
            for s, act, tok in zip(run, acts, first):
                act.t_first = now
                self._emit(s, [tok], done, from_prefill=True)

    def _prefill(self, s0: int, acts: list[_Active]) -> list[int]:
        """Prompts of `acts` into slots s0, s0+1, ...; returns their first tokens."""
        m, dev, n = self.model, self.device, len(acts)
        sl = slice(s0, s0 + n)
        lens = torch.tensor([len(a.req.prompt) for a in acts], dtype=torch.int32, device=dev)
        T = max(len(a.req.prompt) for a in acts)
        ids = torch.zeros(n, T, dtype=torch.int64)
        for i, a in enumerate(acts):
            ids[i, : len(a.req.prompt)] = torch.tensor(a.req.prompt, dtype=torch.int64)
        ids = ids.to(dev)
        # Right-padded: each row's real tokens sit at 0..len-1; the pad positions
        # after them are never attended by real tokens (causal) and become dead
        # once the row's length is set to len.
        self.cache.seqlens[sl] = 0
        rows = StaticKVCache(self.cache.k[:, sl], self.cache.v[:, sl], self.cache.seqlens[sl])
        h = m.forward_layers(m.embed(ids), 0, self.L, rows)
        logits = m.exit_head(h[torch.arange(n, device=dev), lens.long() - 1])  # [n, V]
        if any(a.req.first_token_ids is not None for a in acts):
            allowed = torch.ones_like(logits, dtype=torch.bool)
            for i, a in enumerate(acts):
                if a.req.first_token_ids is not None:
                    allowed[i] = False
                    allowed[i, torch.tensor(a.req.first_token_ids, device=dev)] = True
            logits = logits.masked_fill(~allowed, float("-inf"))
        if self.history is not None:
            self.history.ids[sl, :T] = ids
            logits = self.aids(logits[:, None], TokenHistory(self.history.ids[sl]), lens[:, None])[:, 0]
        if self.do_sample:
            for i, a in enumerate(acts):
                # Beyond float32's range a temperature flattens logits to zero all the same.
                self.temperature[s0 + i] = min(a.req.temperature, torch.finfo(torch.float32).max)
                self.top_k[s0 + i], self.top_p[s0 + i] = a.req.top_k, a.req.top_p
            probs = warp_probs(logits, self.temperature[sl], self.top_k[sl], self.top_p[sl])
            if self.shared_rng is not None:
                tok = torch.multinomial(probs, 1, generator=self.shared_rng)[:, 0]
            else:
                tok = torch.stack([torch.multinomial(probs[i], 1, generator=a.gen)[0] for i, a in enumerate(acts)])
        else:
            tok = logits.argmax(dim=-1)
        self.cache.seqlens[sl] = lens
        self.pending[sl] = tok
        self.alive[sl] = True
        if self.history is not None:
            self.history.ids[sl].scatter_(1, lens.long()[:, None], tok[:, None])
        return tok.tolist()

    def _emit_all(self, tokens: list[list[int]], done: dict) -> None:
        for s, toks in enumerate(tokens):
            if self.slots[s] is not None:
                self._emit(s, toks, done)

    def _emit(self, s: int, toks: list[int], done: dict, from_prefill: bool = False) -> None:
        """Append a slot's new tokens, honouring EOS and max_new_tokens; a
        finished request frees its slot."""
        act = self.slots[s]
        room = act.req.max_new_tokens - len(act.out)
        toks = toks[:room]
        finished = len(toks) == room
        for j, t in enumerate(toks):
            if t in act.req.eos_ids:
                toks, finished = toks[: j + 1], True
                break
        act.out.extend(toks)
        self.stats["new_tokens"] += len(toks)
        if not from_prefill:
            act.emitted += len(toks)
            self.stats["emitted"] += len(toks)
        if act.req.streamer is not None and toks:
            act.req.streamer(toks)
        if finished:
            done[act.rid] = act.output(time.perf_counter())
            self.slots[s] = None
            self.alive[s] = False
            self.cache.seqlens[s] = 0  # a free slot runs at position 0, inside any cache

    # --- token choice ---------------------------------------------------------------

    def _process(self, logits: torch.Tensor, ctx_len: torch.Tensor) -> torch.Tensor:
        """Decoding aids for logits [n, S, V] predicting position ctx_len [n, S]."""
        return logits if self.history is None else self.aids(logits, self.history, ctx_len)

    def _sample_rows(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per slot from probs [n, V]: from the batch's generator, or
        each from its request's own."""
        if self.shared_rng is not None:
            return torch.multinomial(probs, 1, generator=self.shared_rng)[:, 0]
        tok = probs.argmax(dim=-1)  # free slots: any token
        for s, act in enumerate(self.slots):
            if act is not None:
                tok[s] = torch.multinomial(probs[s], 1, generator=act.gen)[0]
        return tok

    def _choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[n, V] -> (tokens [n], warped probabilities [n, V] when sampling)."""
        if not self.do_sample:
            return logits.argmax(dim=-1), None
        probs = warp_probs(logits, self.temperature, self.top_k, self.top_p)
        return self._sample_rows(probs), probs

    def _advance(self, n_kept: torch.Tensor, pending: torch.Tensor) -> None:
        """Keep n_kept positions per slot, queue the next pending token; free
        slots go back to position 0 so they never run past the cache."""
        seqlens = self.cache.seqlens
        seqlens += n_kept
        seqlens.masked_fill_(~self.alive, 0)
        self.pending = pending
        if self.history is not None:
            self.history.write(seqlens, pending)

    # --- steps (one batched iteration over every slot) ------------------------------

    def _step_autoregressive(self) -> list[list[int]]:
        if self.do_sample or self.history is not None:
            logits = self.steps.autoregressive(self.model, self.pending, self.cache)
            logits = self._process(logits[:, None], self.cache.seqlens[:, None] + 1)[:, 0]
            tok, _ = self._choose(logits)
        else:  # the argmax inside the step
            tok = self.steps.greedy_token(self.model, self.pending, self.cache)
        self._advance(1, tok)
        self._count(drafted=[0] * len(self.slots), accepted=[0] * len(self.slots))
        return [[t] for t in tok.tolist()]  # the one host read of the iteration

    def _step_speculative(self) -> list[list[int]]:
        t0 = time.perf_counter()
        m = self.model
        plan = self.policy.plan(len(self.slots), self.device)
        E, adaptive = plan.exit_layer, plan.row_caps is not None
        if not (1 <= E < self.L and 1 <= plan.num_drafts <= self.k):
            raise ValueError(f"drafting policy planned exit_layer={E}, num_drafts={plan.num_drafts}: they must be "
                             f"in [1, {self.L - 1}] and [1, num_speculations={self.k}]")
        base = self.cache.seqlens
        draft_lens = self.draft_lens if adaptive else None
        if not (adaptive or self.do_sample or self.history is not None):
            # Nothing needs the host before the accepted tokens: the whole
            # iteration (k drafts, verify, acceptance) is one step function.
            n_steps = n_verify = plan.num_drafts
            accepted, pending = self.steps.speculate_greedy(m, E, n_steps, self.pending, self.cache, base,
                                                            self.draft_head)
        else:
            n_steps = self._draft_stepwise(plan, E, adaptive)
            # Compiled steps verify all k+1 positions whatever the draft length (one
            # graph, no recompilation); positions past a row's draft length are
            # scratch and draft_lens keeps acceptance off them. Eager verifies only
            # the positions drafted.
            n_verify = self.k if self.steps.compile else n_steps
            hidden, drafts = self.exitq.hidden[:, : n_verify + 1], self.drafts[:, :n_verify]
            if not (self.do_sample or self.history is not None):  # adaptive greedy: acceptance inside the step
                accepted, pending = self.steps.verify_accept(m, E, hidden, self.cache, base, drafts, draft_lens)
            else:
                accepted, pending = self._verify_on_host(E, hidden, drafts, draft_lens, n_verify)
        self._advance(accepted[:, 0] + 1, pending)
        # The one host read of the iteration: accepted lengths, tokens (and draft lengths).
        rows = (torch.cat([accepted, self.draft_lens.long()[:, None]], dim=1) if adaptive else accepted).tolist()
        n_list = [r[0] for r in rows]
        out_list = [r[1 : n_verify + 2] for r in rows]
        drafted = [r[-1] for r in rows] if adaptive else [n_steps] * len(self.slots)
        active = [s for s, a in enumerate(self.slots) if a is not None]
        self.policy.observe(plan, drafted, n_list, active, time.perf_counter() - t0)
        by_exit, steps_by_exit = self.stats["iterations_by_exit"], self.stats["draft_steps_by_exit"]
        by_exit[E] = by_exit.get(E, 0) + 1
        steps_by_exit[E] = steps_by_exit.get(E, 0) + n_steps
        self._count(drafted=drafted, accepted=n_list)
        return [row[: a + 1] for row, a in zip(out_list, n_list)]

    def _verify_on_host(self, E: int, hidden, drafts, draft_lens, n_verify: int):
        """The verify pass, then the decoding aids and sampling on its logits,
        then acceptance: (accepted [n, k+2], next tokens [n]) as verify_accept."""
        base = self.cache.seqlens
        target_logits = self.steps.verify(self.model, E, hidden, self.cache, base)  # [n, n_verify+1, V]
        if self.history is not None:
            # Verify position i predicts position base+1+i from the pending token and drafts 0..i-1.
            target_logits = self._process(target_logits, base[:, None] + 1 + torch.arange(n_verify + 1, device=self.device))
        if self.do_sample:
            target_probs = warp_probs(target_logits, self.temperature, self.top_k, self.top_p)
            n, out = self._verify_sampling_rows(drafts, self.draft_probs[:, :n_verify], target_probs, draft_lens)
        else:
            n, out = ops.verify_greedy(drafts, target_logits, draft_lens=draft_lens)
        return packed(n, out)

    def _draft_stepwise(self, plan, E: int, adaptive: bool) -> int:
        """Draft step by step (each step's token choice may need the decoding aids,
        sampling or the confidence stop), then the last draft
        through the early layers. Returns the number of draft steps taken."""
        m = self.model
        pos = self.draft_pos  # position of the token being fed, advanced in place
        pos.copy_(self.cache.seqlens)
        tok = self.pending
        lens, drafting = self.draft_lens, self.drafting
        if adaptive:  # rows still drafting, and how many each has drafted
            lens.zero_()
            torch.logical_and(self.alive, plan.row_caps > 0, out=drafting)
        n_steps = plan.num_drafts
        for i in range(plan.num_drafts):
            self.exitq.hidden[:, i], logits = self.steps.draft(m, E, tok, self.cache, pos, self.draft_head)
            logits = self._process(logits[:, None], pos[:, None] + 1)[:, 0]
            if self.draft_head is not None and self.draft_head.ids is not None and self.history is not None:
                # The aids may ban every token of the subset: such a row drafts from
                # a uniform q instead (any q is a valid proposal; verification decides).
                logits = torch.where(torch.isfinite(logits).any(-1, keepdim=True), logits, 0.0)
            tok, probs = self._choose(logits)
            if probs is not None:
                self.draft_probs[:, i] = probs
            self.drafts[:, i] = tok
            pos += 1
            if self.history is not None:
                self.history.write(pos, tok)
            if adaptive:
                lens += drafting
                conf = (probs if probs is not None else torch.softmax(logits.float(), dim=-1)).amax(dim=-1)
                drafting &= (conf >= plan.threshold) & (lens < plan.row_caps)
                # A host read per draft step, adaptive mode only: the batch stops
                # drafting once no row drafts any more.
                if i + 1 < plan.num_drafts and not bool(drafting.any()):
                    n_steps = i + 1
                    break
        # The last draft through the early layers (verification starts from its
        # layer-E input; the remaining layers read the early layers' shared cache).
        # A row that stopped drafting at d < n_steps had its position base+d
        # through the early layers in draft step d; its later positions are scratch.
        self.exitq.hidden[:, n_steps] = self.steps.early(m, E, tok, self.cache, pos)
        return n_steps

    def _verify_sampling_rows(self, drafts, draft_probs, target_probs, draft_lens):
        """verify_sampling on the whole batch with the batch's seed, or on each
        active slot alone with its request's seed and offset (so its randomness
        does not depend on its slot or neighbours)."""
        if self.shared_rng is not None:
            out = ops.verify_sampling(drafts, draft_probs, target_probs, self.shared_seed, self.shared_offset,
                                      draft_lens=draft_lens)
            self.shared_offset = (self.shared_offset + 1) % 2**32
            return out
        n = torch.zeros(len(self.slots), dtype=torch.int32, device=self.device)
        out = torch.zeros(len(self.slots), drafts.shape[1] + 1, dtype=torch.int64, device=self.device)
        for s, act in enumerate(self.slots):
            if act is None:
                continue
            row = slice(s, s + 1)
            n[row], out[row] = ops.verify_sampling(drafts[row], draft_probs[row], target_probs[row], act.req.seed,
                                                   act.offset, draft_lens=None if draft_lens is None else draft_lens[row])
            act.offset = (act.offset + 1) % 2**32
        return n, out

    def _count(self, drafted: list[int], accepted: list[int]) -> None:
        active = [(s, a) for s, a in enumerate(self.slots) if a is not None]
        self.stats["steps"] += 1
        self.stats["row_steps"] += len(active)
        for s, act in active:
            act.iterations += 1
            act.drafted += drafted[s]
            act.accepted += accepted[s]
            self.stats["drafted"] += drafted[s]
            self.stats["accepted"] += accepted[s]
