"""One decode iteration over every cache slot: one strategy object per way of
running it, chosen once (`make_iteration`) before the engine's loop starts.

  GreedyAutoregressive   one token per row, the decoding aids (if any) and the
                         argmax inside the step function
  HostAutoregressive     one token per row, its logits through the decoding aids
                         and the token choice (sampling) outside the step function
  FusedSpeculation       self-speculation with a fixed plan, greedy, with or
                         without decoding aids: drafts (each through the aids
                         against its own context), verification and acceptance
                         in one step function (one compiled graph per iteration)
  StepwiseSpeculation    self-speculation with a fixed plan, sampling: each
                         draft's logits through the aids and the sampler, then
                         the verify pass, the aids and the acceptance op
  AdaptiveSpeculation    per-row draft lengths and an exit layer per iteration
                         from a drafting policy (confidence stop), verified on
                         device (greedy, no aids) or as StepwiseSpeculation

A strategy runs the step functions (generation.steps) on the batch's device
state (`DecodeState`: cache, pending tokens, live rows) and returns what each
row emits (`Outcome`); it knows nothing of requests. How logits become tokens
is the sampling objects' business (generation.sampling: `Greedy`/`Sampler`,
`NoAids`/`HistoryAids`), composed in, never tested inside the loop.

The iteration's one host read is `_read_results` (accepted lengths and tokens;
with adaptive drafting also the draft lengths), plus, for adaptive drafting
only, `_any_drafting` after each draft step but the last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..cache import ExitQueryCache, StaticKVCache
from .draft_head import DraftHead
from .policy import checked_plan
from .sampling import Greedy, NoAids
from .steps import StepFunctions, packed

__all__ = ["DecodeState", "Outcome", "GreedyAutoregressive", "HostAutoregressive", "FusedSpeculation",
           "StepwiseSpeculation", "AdaptiveSpeculation", "make_iteration"]


@dataclass
class DecodeState:
    """The batch on the device: the cache (with each slot's length), each slot's
    pending token (emitted, not cached yet) and whether it holds a request."""

    cache: StaticKVCache
    pending: torch.Tensor  # int64 [n]
    alive: torch.Tensor  # bool [n]


@dataclass
class Outcome:
    tokens: list[list[int]]  # per slot: the tokens it emits this iteration
    drafted: list[int]  # per slot: tokens drafted
    accepted: list[int]  # per slot: drafts accepted


def _read_results(t: torch.Tensor) -> list[list[int]]:
    """The iteration's one host read (a sync on GPU)."""
    return t.tolist()


def _any_drafting(drafting: torch.Tensor) -> bool:
    """Adaptive drafting's extra read per draft step: does any row still draft?"""
    return bool(drafting.any())


class Iteration:
    """Base: the model, its step functions, the token choice and the decoding aids."""

    def __init__(self, model, steps: StepFunctions, chooser: Greedy, aids: NoAids):
        self.model, self.steps, self.chooser, self.aids = model, steps, chooser, aids

    def allocate(self, state: DecodeState) -> None:
        """Buffers for a run over state's slots (before the loop)."""

    def reset_row(self, slot: int) -> None:
        """A new request takes `slot`."""

    def _advance(self, state: DecodeState, n_kept, pending: torch.Tensor) -> None:
        """Keep n_kept positions per slot, queue the next pending token; free
        slots go back to position 0 so they never run past the cache. `pending`
        may be a compiled step's output, which the step's next CUDA-graph replay
        overwrites: it is copied into the state's own buffer."""
        seqlens = state.cache.seqlens
        seqlens += n_kept
        seqlens.masked_fill_(~state.alive, 0)
        state.pending.copy_(pending)
        self.aids.record(seqlens, state.pending)

    def _one_token(self, state: DecodeState, tok: torch.Tensor) -> Outcome:
        """An autoregressive iteration's end: every slot keeps one position and emits tok."""
        self._advance(state, 1, tok)
        zeros = [0] * len(tok)
        return Outcome([[t] for t in _read_results(tok)], zeros, zeros)


class GreedyAutoregressive(Iteration):
    def step(self, state: DecodeState, active: list[int]) -> Outcome:
        # The aids (if any: HistoryAids.step_args) and the argmax inside the step.
        tok = self.steps.greedy_token(self.model, state.pending, state.cache, *self.aids.step_args())
        return self._one_token(state, tok)


class HostAutoregressive(Iteration):
    def step(self, state: DecodeState, active: list[int]) -> Outcome:
        logits = self.steps.autoregressive(self.model, state.pending, state.cache)
        logits = self.aids.process(logits[:, None], state.cache.seqlens[:, None] + 1)[:, 0]
        tok, _ = self.chooser.choose(logits)
        return self._one_token(state, tok)


class _Speculation(Iteration):
    """Shared by the self-speculative strategies: the policy, k, the draft head,
    the draft buffers and the per-exit-layer counts."""

    def __init__(self, model, steps, chooser, aids, policy, k: int, draft_head: DraftHead | None, stats: dict):
        super().__init__(model, steps, chooser, aids)
        self.policy, self.k, self.draft_head = policy, k, draft_head
        self.by_exit, self.steps_by_exit = stats["iterations_by_exit"], stats["draft_steps_by_exit"]

    def allocate(self, state: DecodeState) -> None:
        m, n, dev = self.model, len(state.pending), state.pending.device
        self.exitq = ExitQueryCache.allocate(n, self.k, m.config.hidden_size, m.lm_head.weight.dtype, dev)
        self.draft_pos = torch.zeros(n, dtype=torch.int32, device=dev)
        self.drafts = torch.zeros(n, self.k, dtype=torch.int64, device=dev)

    def reset_row(self, slot: int) -> None:
        self.policy.reset_row(slot)

    def _fixed_plan(self, state: DecodeState) -> None:
        """A policy that never adapts (StaticDrafting) plans once per run."""
        n, dev = len(state.pending), state.pending.device
        plan = checked_plan(self.policy.plan(n, dev), self.model.num_layers, self.k, n, dev)
        self.E, self.num_drafts = plan.exit_layer, plan.num_drafts

    def _draft_token(self, state: DecodeState, E: int, i: int, tok, pos):
        """Draft step i: layers [0, E) on tok at pos, the draft's logits through
        the aids and the token choice; pos advances in place."""
        self.exitq.hidden[:, i], logits = self.steps.draft(self.model, E, tok, state.cache, pos, self.draft_head)
        logits = self.aids.draft(logits, pos)
        tok, probs = self.chooser.draft(logits, i)
        self.drafts[:, i] = tok
        pos += 1
        self.aids.record(pos, tok)
        return tok, logits, probs

    def _verify_on_host(self, state: DecodeState, E: int, n_verify: int, draft_lens):
        """The verify pass, then the decoding aids and the token choice's
        acceptance on its logits: (accepted [n, k+2], next tokens [n]) as verify_accept."""
        base = state.cache.seqlens
        hidden, drafts = self.exitq.hidden[:, : n_verify + 1], self.drafts[:, :n_verify]
        target_logits = self.steps.verify(self.model, E, hidden, state.cache, base)  # [n, n_verify+1, V]
        target_logits = self.aids.process_verify(target_logits, base)
        return packed(*self.chooser.accept(drafts, target_logits, draft_lens))

    def _outcome(self, rows: list[list[int]], drafted: list[int], E: int, n_steps: int) -> Outcome:
        """rows: per slot the accepted count, then the tokens to append (-1 padded)."""
        self.by_exit[E] = self.by_exit.get(E, 0) + 1
        self.steps_by_exit[E] = self.steps_by_exit.get(E, 0) + n_steps
        n_list = [r[0] for r in rows]
        return Outcome([r[1 : a + 2] for r, a in zip(rows, n_list)], drafted, n_list)


class FusedSpeculation(_Speculation):
    """Nothing needs the host before the accepted tokens: the whole iteration (k
    drafts, verify, acceptance, and the decoding aids on every row of logits:
    generation.sampling.GrowingContext) is one step function."""

    def allocate(self, state: DecodeState) -> None:
        self._fixed_plan(state)

    def step(self, state: DecodeState, active: list[int]) -> Outcome:
        E, k = self.E, self.num_drafts
        accepted, pending = self.steps.speculate_greedy(self.model, E, k, state.pending, state.cache,
                                                        state.cache.seqlens, self.draft_head, *self.aids.step_args())
        self._advance(state, accepted[:, 0] + 1, pending)
        return self._outcome(_read_results(accepted), [k] * len(pending), E, k)


class StepwiseSpeculation(_Speculation):
    """A fixed plan drafted step by step (each draft's logits through the aids
    and the token choice), then the last draft through the early layers, the
    verify pass and the acceptance on the host side."""

    def allocate(self, state: DecodeState) -> None:
        super().allocate(state)
        self._fixed_plan(state)
        # Compiled steps verify all k+1 positions whatever the draft length (one graph).
        self.n_verify = self.k if self.steps.compile else self.num_drafts

    def step(self, state: DecodeState, active: list[int]) -> Outcome:
        E, n = self.E, self.num_drafts
        pos = self.draft_pos  # position of the token being fed, advanced in place
        pos.copy_(state.cache.seqlens)
        tok = state.pending
        for i in range(n):
            tok, _, _ = self._draft_token(state, E, i, tok, pos)
        # The last draft through the early layers (verification starts from its
        # layer-E input; the remaining layers read the early layers' shared cache).
        self.exitq.hidden[:, n] = self.steps.early(self.model, E, tok, state.cache, pos)
        accepted, pending = self._verify_on_host(state, E, self.n_verify, None)
        self._advance(state, accepted[:, 0] + 1, pending)
        return self._outcome(_read_results(accepted), [n] * len(pending), E, n)


class AdaptiveSpeculation(_Speculation):
    """Per-row draft lengths (confidence stop, per-row caps) and an exit layer
    per iteration, from the policy's plan; the policy observes each iteration."""

    def __init__(self, *args, verify_on_device: bool, **kwargs):
        super().__init__(*args, **kwargs)
        # Greedy without aids: acceptance inside the verify step; else on the host side.
        self._verify = self._verify_on_device if verify_on_device else self._verify_on_host
        # Compiled steps verify all k+1 positions whatever the draft length (one
        # graph, no recompilation); positions past a row's draft length are
        # scratch and draft_lens keeps acceptance off them. Eager verifies only
        # the positions drafted.
        self._verify_width = (lambda n_steps: self.k) if self.steps.compile else (lambda n_steps: n_steps)

    def allocate(self, state: DecodeState) -> None:
        super().allocate(state)
        n, dev = len(state.pending), state.pending.device
        self.draft_lens = torch.zeros(n, dtype=torch.int32, device=dev)
        self.drafting = torch.zeros(n, dtype=torch.bool, device=dev)

    def step(self, state: DecodeState, active: list[int]) -> Outcome:
        t0 = time.perf_counter()
        n, dev = len(state.pending), state.pending.device
        plan = checked_plan(self.policy.plan(n, dev), self.model.num_layers, self.k, n, dev)
        E = plan.exit_layer
        n_steps = self._draft(state, plan, E)
        accepted, pending = self._verify(state, E, self._verify_width(n_steps), self.draft_lens)
        self._advance(state, accepted[:, 0] + 1, pending)
        # The one host read of the iteration: accepted lengths, tokens and draft lengths.
        rows = _read_results(torch.cat([accepted, self.draft_lens.long()[:, None]], dim=1))
        drafted = [r[-1] for r in rows]
        out = self._outcome(rows, drafted, E, n_steps)
        self.policy.observe(plan, drafted, out.accepted, active, time.perf_counter() - t0)
        return out

    def _draft(self, state: DecodeState, plan, E: int) -> int:
        """Draft until every row stopped (confidence below plan.threshold, or its
        cap), then the last draft through the early layers. Returns the number
        of draft steps taken."""
        pos = self.draft_pos
        pos.copy_(state.cache.seqlens)
        tok = state.pending
        lens, drafting = self.draft_lens, self.drafting  # how many each row drafted, rows still drafting
        lens.zero_()
        torch.logical_and(state.alive, plan.row_caps > 0, out=drafting)
        n_steps = plan.num_drafts
        for i in range(plan.num_drafts):
            tok, logits, probs = self._draft_token(state, E, i, tok, pos)
            lens += drafting
            drafting &= (self.chooser.confidence(logits, probs) >= plan.threshold) & (lens < plan.row_caps)
            if i + 1 < plan.num_drafts and not _any_drafting(drafting):
                n_steps = i + 1
                break
        # A row that stopped drafting at d < n_steps had its position base+d
        # through the early layers in draft step d; its later positions are scratch.
        self.exitq.hidden[:, n_steps] = self.steps.early(self.model, E, tok, state.cache, pos)
        return n_steps

    def _verify_on_device(self, state: DecodeState, E: int, n_verify: int, draft_lens):
        hidden, drafts = self.exitq.hidden[:, : n_verify + 1], self.drafts[:, :n_verify]
        return self.steps.verify_accept(self.model, E, hidden, state.cache, state.cache.seqlens, drafts, draft_lens)


def make_iteration(model, steps: StepFunctions, chooser: Greedy, aids: NoAids, policy, k: int,
                   draft_head: DraftHead | None, stats: dict) -> Iteration:
    """The strategy for an engine's settings: the one place that looks at them.

    policy None means autoregressive decoding. A policy whose `adaptive` is
    False (StaticDrafting) plans the same exit layer and k every iteration;
    any other policy plans per iteration, with per-row draft lengths."""
    # Greedy decoding takes the argmax (after the decoding aids, if any) inside
    # the step functions; sampling chooses tokens outside them.
    sampling = type(chooser) is not Greedy
    if policy is None:
        return (HostAutoregressive if sampling else GreedyAutoregressive)(model, steps, chooser, aids)
    args = (model, steps, chooser, aids, policy, k, draft_head, stats)
    if getattr(policy, "adaptive", True):
        return AdaptiveSpeculation(*args, verify_on_device=not sampling and type(aids) is NoAids)
    return (StepwiseSpeculation if sampling else FusedSpeculation)(*args)
