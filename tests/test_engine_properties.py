"""A stateful property test of Engine (hypothesis RuleBasedStateMachine):
requests with random prompts, budgets and EOS ids are added and run, with
streamers that raise, add more requests (some longer than the running cache)
or call run() again. Invariants after every run:

- every added request is returned exactly once (in id order);
- a greedy request that did not fail equals its own batch-1 autoregressive
  output; a failed one carries its streamer's exception and a prefix of it;
- what a streamer received is what its request returned;
- no slot, queue entry, live row or cache position is left behind.

fp32 tiny model: greedy self-speculation is exactly autoregressive decoding.
"""

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import layerskip_kernels as lk

from helpers import tiny_model

with torch.random.fork_rng():  # no side effect on the global generator at collection
    MODEL = tiny_model(layers=4, seed=5)
V = MODEL.config.vocab_size
_REFERENCE: dict[tuple, list[int]] = {}


def reference(prompt, n, eos) -> list[int]:
    """Batch-1 autoregressive greedy output (cached across examples)."""
    key = (tuple(prompt), n, tuple(eos))
    if key not in _REFERENCE:
        _REFERENCE[key] = lk.generate(MODEL, [prompt], max_new_tokens=n, eos_token_id=list(eos)).sequences[0]
    return _REFERENCE[key]


class Boom(Exception):
    pass


prompts = st.lists(st.integers(0, V - 1), min_size=1, max_size=8)
# A request a streamer adds may need more cache than the running round has.
long_prompts = st.lists(st.integers(0, V - 1), min_size=10, max_size=24)


class EngineMachine(RuleBasedStateMachine):
    @initialize(mode=st.sampled_from(["autoregressive", "static", "adaptive"]), slots=st.integers(1, 3))
    def build(self, mode, slots):
        kw = {"autoregressive": {}, "static": dict(exit_layer=2, num_speculations=2),
              "adaptive": dict(exit_layer=2, num_speculations=3, speculation="adaptive")}[mode]
        self.engine = lk.Engine(MODEL, max_batch_size=slots, **kw)
        self.expected: dict[int, tuple] = {}  # id -> (prompt, n, eos)
        self.streamed: dict[int, list[int]] = {}
        self.raised: dict[int, BaseException] = {}
        self.returned: set[int] = set()
        self.reentrant_runs_refused = 0
        self.reentrant_runs_tried = 0

    def _add(self, prompt, n, eos, behaviour, payload):
        got: list[int] = []
        box: dict = {}

        def streamer(tokens):
            got.extend(tokens)
            if behaviour == "raise" and len(got) >= payload:
                box["error"] = Boom(f"request {box['rid']}")
                self.raised[box["rid"]] = box["error"]
                raise box["error"]
            if behaviour == "add" and "added" not in box:
                box["added"] = True
                p, m = payload
                self._add(p, m, (), "plain", None)
            if behaviour == "run" and "ran" not in box:
                box["ran"] = True
                self.reentrant_runs_tried += 1
                with pytest.raises(RuntimeError, match="while this engine is running"):
                    self.engine.run()
                self.reentrant_runs_refused += 1

        rid = self.engine.add(prompt, max_new_tokens=n, eos_token_id=list(eos), streamer=streamer)
        box["rid"] = rid
        assert rid not in self.expected
        self.expected[rid] = (list(prompt), n, tuple(eos))
        self.streamed[rid] = got
        return rid

    @rule(prompt=prompts, n=st.integers(1, 10), eos=st.sampled_from([(), (3,), (7, 11)]),
          behaviour=st.sampled_from(["plain", "plain", "raise", "add", "run"]), at=st.integers(1, 6),
          extra=st.tuples(long_prompts, st.integers(1, 20)))
    def add(self, prompt, n, eos, behaviour, at, extra):
        self._add(prompt, n, eos, behaviour, at if behaviour == "raise" else extra)

    @precondition(lambda self: len(self.expected) > len(self.returned))
    @rule()
    def run(self):
        outs = self.engine.run()
        ids = [o.request_id for o in outs]
        assert ids == sorted(ids)
        assert not set(ids) & self.returned, "a request returned twice"
        self.returned |= set(ids)
        assert self.returned == set(self.expected), "a request was lost"
        for o in outs:
            prompt, n, eos = self.expected[o.request_id]
            ref = reference(prompt, n, eos)
            assert self.streamed[o.request_id] == o.tokens
            if o.request_id in self.raised:
                assert o.error is self.raised[o.request_id]
                assert o.tokens == ref[: len(o.tokens)]
            else:
                assert o.error is None and o.tokens == ref
        e = self.engine
        assert all(a is None for a in e.slots) and not e.waiting and not e.running
        assert not bool(e.state.alive.any()) and bool((e.cache.seqlens == 0).all())

    @invariant()
    def refused_every_reentrant_run(self):
        assert self.reentrant_runs_refused == self.reentrant_runs_tried


EngineMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=10, deadline=None,
                                           suppress_health_check=list(HealthCheck))
TestEngineMachine = EngineMachine.TestCase
