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
`generate()` (generation.api) is the transformers-style entry point built on it.

The engine owns requests, slots, admission (prefill) and emission (EOS,
budgets, streamers) and the stats. How one batched iteration runs is a strategy
object of generation.iteration, chosen once per run from the engine's settings
(autoregressive or self-speculative, greedy or sampling, decoding aids,
static or adaptive drafting, compiled or not); the loop never tests them.

Sampling has two modes. By default each request is reproducible whatever else
is in the batch: it draws its draft and first tokens from its own
torch.Generator and its acceptance randomness from `verify_sampling` called on
its row alone with its own seed and Philox offset, so its tokens depend on its
seed only (a small loop over rows per step). `Engine(seed=S)` instead draws
for the whole batch from one generator and one `verify_sampling` call per step
(what `generate(seed=S)` uses: fully batched, reproducible for the same
prompts and batch).

Reproducibility by drafting mode: with static drafting, or adaptive drafting
at a fixed exit layer, a request's sampled tokens with its own seed are the
same alone and in any batch (its generator restarts from (seed, Philox offset)
after each iteration, so the draws a row makes after it stopped drafting while
others go on do not shift its later ones). With the exit-layer bandit on they
are not: one exit layer per iteration for the whole batch, chosen from measured
speed, so the draft distribution a seed draws from depends on timing and on
the other requests (the sampled distribution stays exact). Greedy output is
exact in every mode.

Failure isolation and re-entrancy (a serving engine never loses a request):

- Every added request is returned by `run()` exactly once, in id order, as a
  `RequestOutput`. A request whose streamer raises (an `Exception`), or whose
  own settings turn out impossible at admission (every allowed first token
  banned), is finished at once with `error` set to that exception and the
  tokens emitted before it; its slot is freed and the other requests go on.
- Each request's arguments are copied at `add()`/`submit()` (prompt, EOS ids,
  first_token_ids, sampling settings): changing the caller's lists afterwards
  changes nothing.
- `add()` may be called from a streamer during `run()`. The request is queued;
  it is admitted in this run when a slot is free and it fits the cache this run
  allocated (prompt + max_new_tokens + k + 1 positions), otherwise after the
  run's current requests drain, in a new round of the same `run()` with a
  cache allocated for what is waiting. `add()` refuses (ValueError naming the
  argument) a request that can never fit (max_cache_len, memory); the run
  returns it with the others.
- `run()` called while this engine runs (from a streamer) raises RuntimeError
  before touching any state.
- An exception that escapes the loop anyway (KeyboardInterrupt, a model error,
  a `BaseException` from a streamer) puts the requests in flight back at the
  head of the queue (they restart from their prompt on the next `run()`, their
  streamers seeing their tokens again) and keeps the finished outputs for the
  next `run()`: nothing is dropped.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import ops
from ..cache import StaticKVCache
from .config import SamplingParams, SpeculationConfig
from .draft_head import draft_head_for
from .iteration import DecodeState, make_iteration
from .policy import make_policy
from .sampling import DecodingAids, make_aids, make_chooser
from .steps import StepFunctions, cache_shape
from .validation import check_engine_args, check_first_token_ids, check_prompt, validate_generate_args

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
    first_token_ids: tuple[int, ...] | None = None  # token healing: allowed first tokens


@dataclass
class RequestOutput:
    request_id: int
    tokens: list[int]  # generated tokens (prompt excluded)
    stats: dict = field(default_factory=dict)
    # Set when the request failed (its streamer raised, or an impossible
    # setting found at admission): tokens holds what it emitted before.
    error: BaseException | None = None


class _Active:
    """Host-side state of a request that holds a slot."""

    def __init__(self, rid: int, req: Request, t_start: float):
        self.rid, self.req = rid, req
        self.out: list[int] = []
        self.drafted = self.accepted = self.iterations = self.emitted = 0
        self.t_admit = time.perf_counter()
        self.t_start = t_start
        self.t_first: float | None = None

    def output(self, t_done: float, error: BaseException | None = None) -> RequestOutput:
        n = len(self.out)
        stats = dict(
            new_tokens=n,
            drafted=self.drafted,
            accepted=self.accepted,
            acceptance_rate=self.accepted / self.drafted if self.drafted else None,
            iterations=self.iterations,
            tokens_per_step=self.emitted / self.iterations if self.iterations else None,
            time_to_first_token_s=None if self.t_first is None else self.t_first - self.t_start,
            latency_s=t_done - self.t_start,
            tokens_per_s=n / (t_done - self.t_admit) if t_done > self.t_admit else None,
        )
        return RequestOutput(self.rid, list(self.out), stats, error)


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

    The settings are checked here (SpeculationConfig.validate, and
    max_batch_size, seed, model: ValueError naming the argument); requests by
    `add`. Reproducibility per drafting mode, failure isolation and
    re-entrancy (streamers that raise, `add` or `run` from a streamer): see
    the module docstring.
    """

    def __init__(self, model, max_batch_size: int, exit_layer: int | None = None, num_speculations: int = 4,
                 do_sample: bool = False, aids: DecodingAids = DecodingAids(), seed: int | None = None,
                 compile: bool = False, speculation="static", draft_vocab: torch.Tensor | None = None,
                 draft_quantization: str | None = None):
        check_engine_args(model, max_batch_size, seed)  # before the settings read model.config
        if not isinstance(aids, DecodingAids):
            raise ValueError(f"aids must be a generation.sampling.DecodingAids, got {type(aids).__name__}")
        spec = SpeculationConfig(exit_layer, num_speculations, speculation, draft_vocab, draft_quantization, compile,
                                 aids.repetition_penalty, aids.no_repeat_ngram_size, do_sample).validate(model)
        self._build(model, max_batch_size, spec, seed)

    @classmethod
    def from_config(cls, model, max_batch_size: int, spec: SpeculationConfig, seed: int | None = None) -> Engine:
        """An engine for settings already checked by spec.validate(model)."""
        engine = cls.__new__(cls)
        engine._build(model, max_batch_size, spec, seed)
        return engine

    def _build(self, model, max_batch_size: int, spec: SpeculationConfig, seed: int | None) -> None:
        max_batch_size, seed = check_engine_args(model, max_batch_size, seed)
        self.model, self.spec = model, spec
        self.E = spec.exit_layer
        self.k = spec.num_speculations if spec.exit_layer is not None else 0
        self.max_batch_size = max_batch_size
        self.device = model.lm_head.weight.device
        self.steps = StepFunctions(spec.compile, self.device)
        self.policy = None if self.E is None else make_policy(spec.speculation, model, self.E, self.k)
        own_head = spec.draft_vocab is None and spec.draft_quantization is None
        self.draft_head = None if own_head or self.E is None else draft_head_for(model, spec.draft_vocab,
                                                                                 spec.draft_quantization)
        if self.draft_head is not None:
            self.steps.mark_static(*self.draft_head.tensors())
        self.chooser = make_chooser(spec.do_sample, seed, self.device)
        self.aids = make_aids(spec.aids, draft_subset=self.draft_head is not None and self.draft_head.ids is not None)
        self.waiting: deque[tuple[int, Request]] = deque()
        self.next_id = 0
        self.running = False
        self.slots: list[_Active | None] = []
        self.T_max = 0  # cache positions of the current round (0: none allocated)
        self.finished: dict[int, RequestOutput] = {}  # outputs the next run() returns
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
        prompt = check_prompt(prompt, self.model.config.vocab_size)
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed, eos_token_id)
        return self.submit(prompt, params, streamer, max_cache_len, first_token_ids)

    def submit(self, prompt, params: SamplingParams, streamer=None, max_cache_len: int | None = None,
               first_token_ids=None) -> int:
        """`add` with the request's settings as one SamplingParams."""
        p = params
        if not isinstance(p, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(p).__name__}")
        prompt = check_prompt(prompt, self.model.config.vocab_size)  # a copy
        a = validate_generate_args(
            self.model, [prompt], None, max_new_tokens=p.max_new_tokens, exit_layer=self.E,
            num_speculations=self.k or 1, do_sample=self.spec.do_sample, temperature=p.temperature, top_k=p.top_k,
            top_p=p.top_p, eos_token_id=p.eos_token_id, seed=p.seed, streamer=streamer, max_cache_len=max_cache_len)
        check_first_token_ids(None if first_token_ids is None else [first_token_ids], 1, self.model.config.vocab_size)
        seed = int(torch.randint(0, 2**62, ()).item()) if a.seed is None else a.seed
        # Copies: the caller's lists may change after add() without changing the request.
        allowed = None if first_token_ids is None else tuple(int(t) for t in first_token_ids)
        return self.add_request(Request(list(a.prompts[0]), a.max_new_tokens, frozenset(a.eos_ids), seed,
                                        a.temperature, a.top_k, a.top_p, streamer, allowed))

    # --- run ------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self) -> list[RequestOutput]:
        """Decode every waiting request (and those added meanwhile); every
        request once, in the order they were added (failed ones with `error`)."""
        if self.running:
            raise RuntimeError("Engine.run() was called while this engine is running (from a streamer?); "
                               "queue work with add() instead: the running run() decodes it")
        self.running = True
        try:
            t_start = time.perf_counter()
            while self.waiting:  # a round per cache size (module docstring)
                self._round(t_start)
        except BaseException:
            self._requeue()
            raise
        finally:
            self.running = False
        done, self.finished = self.finished, {}
        return [done[rid] for rid in sorted(done)]

    def _round(self, t_start: float) -> None:
        """Allocate a cache for what is waiting now and decode until every slot is free."""
        self.usable = min(self.max_batch_size, len(self.waiting))  # slots that take requests
        T_max = max(self._positions(r) for _, r in self.waiting)
        n_slots, T_max = cache_shape(self.usable, T_max, self.steps.compile)
        # The strategy of every iteration of this round, chosen here once.
        self.iteration = make_iteration(self.model, self.steps, self.chooser, self.aids, self.policy, self.k,
                                        self.draft_head, self.stats)
        self._allocate(n_slots, T_max)
        self.T_max = T_max
        self.slots = [None] * n_slots
        self._admit(t_start)
        while any(a is not None for a in self.slots):
            active = [s for s, a in enumerate(self.slots) if a is not None]
            # Lengths and tokens are the engine's own (validated at admission):
            # the ops skip their value checks, each a host sync per layer on GPU.
            with ops.trusted_inputs():
                tokens = self._step(active)
            self._emit_all(tokens)
            self._admit(t_start)
        self.T_max = 0

    def _positions(self, req: Request) -> int:
        """Cache positions a request needs: slack of k+1, drafts may run past the last position kept."""
        return len(req.prompt) + req.max_new_tokens + self.k + 1

    def _requeue(self) -> None:
        """An exception escapes run(): the requests in flight go back to the head of the queue."""
        back = sorted((a.rid, a.req) for a in self.slots if a is not None)
        self.waiting.extendleft(reversed(back))
        self.slots = [None] * len(self.slots)
        self.T_max = 0

    def _step(self, active: list[int]) -> list[list[int]]:
        """One batched iteration over every slot; counts it; each slot's new tokens."""
        out = self.iteration.step(self.state, active)
        self.stats["steps"] += 1
        self.stats["row_steps"] += len(active)
        for s in active:
            act = self.slots[s]
            act.iterations += 1
            act.drafted += out.drafted[s]
            act.accepted += out.accepted[s]
            self.stats["drafted"] += out.drafted[s]
            self.stats["accepted"] += out.accepted[s]
        return out.tokens

    def _allocate(self, n: int, T_max: int) -> None:
        m, dev = self.model, self.device
        self.cache = StaticKVCache.for_model(m, n, T_max)
        rope = m.rope(T_max, dev)  # grown here, never inside a compiled step
        m.refresh_decode_weights()  # likewise (model/linear.py)
        # pending: a buffer of its own that each step's next tokens are copied
        # into (iteration.Iteration._advance), never a step's output itself.
        self.state = DecodeState(self.cache, torch.zeros(n, dtype=torch.int64, device=dev),
                                 torch.zeros(n, dtype=torch.bool, device=dev))
        self.aids.allocate(n, T_max, dev)
        self.chooser.allocate(n, self.k, m.config.vocab_size, dev)
        self.iteration.allocate(self.state)
        # What the CUDA graphs read or write besides the parameters (steps.StepFunctions):
        # the cache, the RoPE tables, the pending tokens, the decoding aids' token
        # history. A new cache re-records the graphs; it does not recompile them.
        history = [t for t in self.aids.step_args() if isinstance(t, torch.Tensor)]
        self.steps.mark_static(self.cache.k, self.cache.v, *rope, self.state.pending, *history)

    # --- admission and emission -----------------------------------------------------

    def _admit(self, t_start: float) -> None:
        """Prefill waiting requests that fit this round's cache into free slots:
        a run of consecutive free slots in one batched call (the whole batch at
        the start), each writing only its own rows of the cache. A request too
        long for this cache waits for the next round."""
        while self.waiting:
            free = [s for s, a in enumerate(self.slots[: self.usable]) if a is None]
            fitting = [i for i, (_, req) in enumerate(self.waiting) if self._positions(req) <= self.T_max]
            if not free or not fitting:
                return
            run = [free[0]]
            while len(run) < len(fitting) and run[-1] + 1 < self.usable and self.slots[run[-1] + 1] is None:
                run.append(run[-1] + 1)
            picked = [self.waiting[i] for i in fitting[: len(run)]]
            for i in reversed(fitting[: len(run)]):
                del self.waiting[i]
            acts = []
            for s, (rid, req) in zip(run, picked):
                self.iteration.reset_row(s)
                acts.append(_Active(rid, req, t_start))
                self.slots[s] = acts[-1]
            t0 = time.perf_counter()
            first, impossible = self._prefill(run[0], acts)
            now = time.perf_counter()
            self.stats["prefill_s"] += now - t0
            for s, act, tok, error in zip(run, acts, first, impossible):
                act.t_first = now
                if error is not None:
                    self._finish(s, error)
                else:
                    self._emit(s, [tok], from_prefill=True)

    def _prefill(self, s0: int, acts: list[_Active]) -> tuple[list[int], list[ValueError | None]]:
        """Prompts of `acts` into slots s0, s0+1, ...; returns their first
        tokens, and per request None or the error that makes it impossible."""
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
        h = m.forward_layers(m.embed(ids), 0, m.num_layers, rows)
        logits = m.exit_head(h[torch.arange(n, device=dev), lens.long() - 1])  # [n, V]
        if any(a.req.first_token_ids is not None for a in acts):
            allowed = torch.ones_like(logits, dtype=torch.bool)
            for i, a in enumerate(acts):
                if a.req.first_token_ids is not None:
                    allowed[i] = False
                    allowed[i, torch.tensor(a.req.first_token_ids, device=dev)] = True
            logits = logits.masked_fill(~allowed, float("-inf"))
        logits = self.aids.prefill(logits, ids, sl, lens)
        impossible = [None] * n
        if any(a.req.first_token_ids is not None for a in acts):
            # One host read per admission (not per step): a row whose every
            # allowed first token the aids ban has no token to emit.
            for i in torch.isneginf(logits).all(dim=-1).nonzero().flatten().tolist():
                impossible[i] = ValueError(
                    f"first_token_ids={list(acts[i].req.first_token_ids)} leaves no first token: the decoding aids "
                    f"(no_repeat_ngram_size={self.spec.no_repeat_ngram_size}) ban every one of them after this "
                    "prompt")
                logits[i] = 0.0  # any token: the request fails, its slot is freed at once
        self.chooser.admit(s0, [a.req for a in acts])
        tok = self.chooser.first(logits, sl)
        self.cache.seqlens[sl] = lens
        self.state.pending[sl] = tok
        self.state.alive[sl] = True
        self.aids.record_prefill(sl, lens, tok)
        return tok.tolist(), impossible

    def _emit_all(self, tokens: list[list[int]]) -> None:
        for s, toks in enumerate(tokens):
            if self.slots[s] is not None:
                self._emit(s, toks)

    def _emit(self, s: int, toks: list[int], from_prefill: bool = False) -> None:
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
            try:
                act.req.streamer(list(toks))
            except Exception as e:  # this request fails; the others go on
                self._finish(s, e)
                return
        if finished:
            self._finish(s)

    def _finish(self, s: int, error: BaseException | None = None) -> None:
        """The request of slot s is done (or failed): its output, and the slot freed."""
        act = self.slots[s]
        self.finished[act.rid] = act.output(time.perf_counter(), error)
        self.slots[s] = None
        self.state.alive[s] = False
        self.chooser.release(s)
        self.cache.seqlens[s] = 0  # a free slot runs at position 0, inside any cache
