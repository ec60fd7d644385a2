"""Drafting policies: which exit layer E and how many drafts per row, per iteration.

The engine asks its policy for a `Plan` before each self-speculative iteration
and reports what happened afterwards. Two policies:

  StaticDrafting     LayerSkip as published: a fixed E and k for every row.
  AdaptiveDrafting   three mechanisms on top of it, each batched:
    - confidence stop: a row stops drafting after a token whose exit-head
      probability is below `threshold`; the batch stops drafting when every row
      has stopped (or after k_max drafts);
    - per-row k: each row drafts at most the k that maximizes its expected
      tokens per unit of cost, (1 - a^(k+1)) / ((1 - a)(k c + v)), for its own
      running acceptance estimate a (successes and failures of its recent
      drafts, decayed), with c and v the draft and verify costs relative to an
      autoregressive step estimated from the weights each step reads;
    - exit layer per iteration: an epsilon-greedy bandit over candidate exit
      layers, rewarded by the measured tokens per second of the iterations run
      at each (every candidate tried `warmup` times first).

Exactness: greedy output stays equal to autoregressive decoding and sampling
stays lossless whatever a plan says, because acceptance is decided by the full
model (verify_greedy / verify_sampling with per-row `draft_lens`), and a row's
draft length depends only on the draft's own outputs. Changing E between
iterations keeps the shared cache valid: after every iteration, each row's
positions below its verified length hold all layers' K/V (layers [0, E) written
while drafting, [E, L) by verification) whatever E was, and positions at or
above it are scratch that the next iteration overwrites before any read.

One exit layer per iteration for the whole batch (rows of a batched step run
the same layers); a per-row exit layer would split each step into one pass per
distinct E.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .validation import MAX_SPECULATIONS, SPECULATION_MODES, check_int

__all__ = ["Plan", "StaticDrafting", "AdaptiveDrafting", "make_policy", "SPECULATION_MODES", "best_k",
           "ADAPTIVE_DEFAULTS", "adaptive_settings", "adaptive_policy", "checked_plan"]

# AdaptiveDrafting's settings when the model's config.json records none
# (layerskip.adaptive, written by bench/bench_adaptive.py --record from measurement):
# threshold and per_row_k as in AdaptiveDrafting; bandit: choose the exit layer
# among E-1, E, E+1 (False: always E). The record may also hold exit_layer and
# num_speculations (k_max), the CLI's defaults for adaptive drafting.
ADAPTIVE_DEFAULTS = {"threshold": 0.3, "per_row_k": True, "bandit": True}
ADAPTIVE_CLI_DEFAULTS = ("exit_layer", "num_speculations")


@dataclass
class Plan:
    exit_layer: int
    num_drafts: int  # draft steps at most (<= the engine's k)
    row_caps: torch.Tensor | None = None  # int32 [n]: most drafts per row; None: num_drafts for every row
    threshold: float = 0.0  # confidence stop: 0 never stops early


class StaticDrafting:
    """Fixed exit layer and k for every row (the LayerSkip paper's scheme).
    Its plan never changes: the engine reads it once (generation.iteration)."""

    adaptive = False

    def __init__(self, exit_layer: int, k: int):
        self.exit_layer, self.k = exit_layer, k

    def plan(self, n_slots: int, device) -> Plan:
        return Plan(self.exit_layer, self.k)

    def reset_row(self, slot: int) -> None:
        pass

    def observe(self, plan: Plan, drafted: list[int], accepted: list[int], active: list[int], seconds: float) -> None:
        pass


def checked_plan(plan: Plan, num_layers: int, k: int, n_slots: int, device) -> Plan:
    """`plan` after checking it against the model and the engine's k (before
    any step runs; ValueError naming the plan field); a plan without row caps
    gets num_drafts for every row (as a tensor)."""
    if not isinstance(plan, Plan):
        raise ValueError(f"drafting policy's plan() must return a generation.policy.Plan, got {type(plan).__name__}")
    E = check_int("drafting policy plan.exit_layer", plan.exit_layer, 1, num_layers - 1)
    n = check_int("drafting policy plan.num_drafts", plan.num_drafts, 1, k, f" (num_speculations={k})")
    th = plan.threshold
    if isinstance(th, bool) or not isinstance(th, (int, float)) or not 0.0 <= th <= 1.0:
        raise ValueError(f"drafting policy plan.threshold must be a number in [0, 1], got {th!r}")
    caps = plan.row_caps
    if caps is None:
        return Plan(E, n, torch.full((n_slots,), n, dtype=torch.int32, device=device), float(th))
    if not isinstance(caps, torch.Tensor) or caps.shape != (n_slots,) or caps.dtype != torch.int32 \
            or caps.device.type != torch.device(device).type:
        raise ValueError(f"drafting policy plan.row_caps must be None or an int32 tensor [{n_slots}] on {device}, "
                         f"got {caps.dtype if isinstance(caps, torch.Tensor) else type(caps).__name__} "
                         f"{tuple(caps.shape) if isinstance(caps, torch.Tensor) else ''}".rstrip())
    return Plan(E, n, caps, float(th))


def best_k(a: float, c: float, v: float, k_max: int) -> int:
    """The k in 1..k_max with the most expected tokens per unit of cost."""
    gain = lambda k: (k + 1) / (k * c + v) if a >= 1 else (1 - a ** (k + 1)) / ((1 - a) * (k * c + v))
    return max(range(1, k_max + 1), key=gain)


def relative_costs(model, exit_layer: int) -> tuple[float, float]:
    """(c, v): a draft step and a verify pass as fractions of an autoregressive
    step, from the weights each reads (memory-bound decode steps)."""
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    head = model.lm_head.weight.numel() / layer  # in layers
    L = model.num_layers
    return (exit_layer + head) / (L + head), 1.0


class AdaptiveDrafting:
    """See the module docstring.

    Args:
        model: the model (its layer and head sizes give the cost estimates).
        exit_layer: the default E, a candidate of the bandit.
        k_max: most drafts per iteration (the engine's k).
        threshold: exit-head probability below which a row stops drafting.
        per_row_k: cap each row's drafts by the k its acceptance estimate favours
            (False: every row may draft k_max, the confidence stop alone ends it).
        exit_layers: candidate exit layers (default: E-1, E, E+1 within [1, L-1]).
        decay: weight of a row's older acceptance observations per iteration.
        epsilon, warmup: the bandit's exploration rate and initial tries per candidate.
        seed: the bandit's exploration draws (a plan never changes the output,
            only the speed).
    """

    adaptive = True

    def __init__(self, model, exit_layer: int, k_max: int, threshold: float = 0.3, per_row_k: bool = True,
                 exit_layers=None, decay: float = 0.8, epsilon: float = 0.1, warmup: int = 4, seed: int = 0):
        L = model.num_layers
        self.k_max, self.threshold, self.decay, self.epsilon, self.warmup = k_max, threshold, decay, epsilon, warmup
        self.per_row_k = per_row_k
        cands = exit_layers if exit_layers is not None else (exit_layer - 1, exit_layer, exit_layer + 1)
        self.exits = sorted({e for e in cands if 1 <= e <= L - 1}) or [exit_layer]
        self.costs = {e: relative_costs(model, e) for e in self.exits}
        self.tries = {e: 0 for e in self.exits}
        self.rate = {e: 0.0 for e in self.exits}  # EMA of tokens/s at each exit
        self.rng = random.Random(seed)
        self.success: list[float] = []
        self.failure: list[float] = []

    def _row(self, slot: int) -> None:
        while len(self.success) <= slot:
            self.success.append(0.0)
            self.failure.append(0.0)

    def reset_row(self, slot: int) -> None:
        self._row(slot)
        self.success[slot] = self.failure[slot] = 0.0

    def acceptance(self, slot: int) -> float:
        """Running per-token acceptance estimate of a slot (prior: 1 success, 1 failure)."""
        self._row(slot)
        return (self.success[slot] + 1.0) / (self.success[slot] + self.failure[slot] + 2.0)

    def choose_exit(self) -> int:
        untried = [e for e in self.exits if self.tries[e] < self.warmup]
        if untried:
            return untried[0]
        if self.rng.random() < self.epsilon:
            return self.rng.choice(self.exits)
        return max(self.exits, key=lambda e: self.rate[e])

    def plan(self, n_slots: int, device) -> Plan:
        E = self.choose_exit()
        c, v = self.costs[E]
        caps = [best_k(self.acceptance(s), c, v, self.k_max) if self.per_row_k else self.k_max
                for s in range(n_slots)]
        return Plan(E, max(caps), torch.tensor(caps, dtype=torch.int32, device=device), self.threshold)

    def observe(self, plan: Plan, drafted: list[int], accepted: list[int], active: list[int], seconds: float) -> None:
        for s in active:
            self._row(s)
            self.success[s] = self.decay * self.success[s] + accepted[s]
            self.failure[s] = self.decay * self.failure[s] + (1.0 if accepted[s] < drafted[s] else 0.0)
        E = plan.exit_layer
        if seconds > 0 and active:
            rate = sum(accepted[s] + 1 for s in active) / seconds
            self.tries[E] += 1
            w = 1.0 / self.tries[E] if self.tries[E] <= self.warmup else 0.2
            self.rate[E] += w * (rate - self.rate[E])


def adaptive_settings(config, source: str = "config.json") -> dict:
    """ADAPTIVE_DEFAULTS overridden by the model config's layerskip.adaptive, with
    its ADAPTIVE_CLI_DEFAULTS when recorded (for the CLI and the benchmarks), all
    checked against the model. Raises ValueError naming the key."""
    extra = getattr(config, "extra", {}) or {}
    recorded = extra.get("layerskip", {}).get("adaptive", {})
    where = f"{source}: layerskip.adaptive"
    if not isinstance(recorded, dict):
        raise ValueError(f"{where} must be an object, got {type(recorded).__name__}")
    known = sorted(ADAPTIVE_DEFAULTS) + list(ADAPTIVE_CLI_DEFAULTS)
    unknown = set(recorded) - set(known)
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}; expected some of {known}")
    out = dict(ADAPTIVE_DEFAULTS, **recorded)
    th = out["threshold"]
    if isinstance(th, bool) or not isinstance(th, (int, float)) or not 0.0 <= th <= 1.0:
        raise ValueError(f"{where}.threshold must be a number in [0, 1], got {th!r}")
    for key in ("per_row_k", "bandit"):
        if not isinstance(out[key], bool):
            raise ValueError(f"{where}.{key} must be true or false, got {out[key]!r}")
    bounds = {"exit_layer": (1, config.num_hidden_layers - 1), "num_speculations": (1, MAX_SPECULATIONS)}
    for key in ADAPTIVE_CLI_DEFAULTS:
        if key in out:
            out[key] = check_int(f"{where}.{key}", out[key], *bounds[key])
    return out


def adaptive_policy(model, exit_layer: int, k_max: int, settings: dict) -> AdaptiveDrafting:
    """AdaptiveDrafting from settings shaped like adaptive_settings' (threshold, per_row_k, bandit)."""
    return AdaptiveDrafting(model, exit_layer, k_max, threshold=float(settings["threshold"]),
                            per_row_k=settings["per_row_k"], exit_layers=None if settings["bandit"] else [exit_layer])


def make_policy(speculation, model, exit_layer: int, k: int):
    """A policy object from generate()'s `speculation` argument (a mode name or a policy).
    "adaptive" uses the model's adaptive_settings, with k as k_max."""
    if speculation == "static":
        return StaticDrafting(exit_layer, k)
    if speculation == "adaptive":
        return adaptive_policy(model, exit_layer, k, adaptive_settings(model.config))
    return speculation  # an object with plan / reset_row / observe (checked by validation)
