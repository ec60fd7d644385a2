"""Batched autoregressive and self-speculative (LayerSkip) decoding: `generate`.

The decoding loop itself lives in `engine.Engine` (continuous batching over
cache slots; one iteration strategy of `iteration` per step); this module is
the transformers-style entry point that validates arguments once and turns the
prompts into requests. It holds no decoding state.

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

from .config import SpeculationConfig
from .engine import Engine, Request
from .validation import MAX_SPECULATIONS, check_first_token_ids, validate_generate_args

__all__ = ["generate", "GenerationOutput", "MAX_SPECULATIONS"]


@dataclass
class GenerationOutput:
    sequences: list[list[int]]  # generated tokens per row (prompt excluded)
    stats: dict = field(default_factory=dict)


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
    max_batch_size: int | None = None,
    compile: bool = False,
    speculation: str = "static",
    draft_vocab=None,
    draft_quantization: str | None = None,
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
        seed: makes sampling reproducible (None: random); an int in [-2^63, 2^63)
            on every backend (validation.SEED_RANGE). Integer arguments accept
            numpy/torch integer scalars; temperature must be >= MIN_TEMPERATURE (1e-5).
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
        max_batch_size: rows decoded at once (default: all). With more prompts
            than that, finished rows are refilled by waiting prompts at once
            (continuous batching, see generation.engine.Engine).
        compile: run the decode steps compiled with torch.compile (CUDA graphs on
            a GPU; see generation.steps). Graphs are built once per model, exit
            layer and shape bucket and reused by later calls; the time spent
            building them is reported as stats["compile_s"], not in time_s.
            Off by default: on CPU a first compile costs more than it saves on
            generations shorter than a few thousand tokens (README).
        speculation: "static" (LayerSkip: exit_layer and num_speculations fixed)
            or "adaptive" (generation.policy.AdaptiveDrafting: each row stops
            drafting at a low-confidence draft or at its own k chosen from its
            acceptance, at most num_speculations; the exit layer is chosen per
            iteration around exit_layer). Output is exact either way.
        draft_vocab: None (the draft scores every token) or distinct token ids
            the draft head scores, every other token being -inf for the draft
            only (generation.draft_vocab, e.g. frequent_tokens(model_dir, 1024)).
            Verification scores the full vocabulary: greedy output is unchanged
            and sampling keeps the full model's distribution.
        draft_quantization: None (the draft scores with the LM head as it is)
            or "int8": with an int8 copy of it, one fp32 scale per row
            (generation.draft_head; half the head's bytes per draft step).
            Verification uses the model's own head: output stays exact.

    Returns:
        GenerationOutput(sequences, stats): per-row generated tokens (prompt
        excluded) and drafted, accepted, acceptance_rate, tokens_per_step, time_s,
        tokens_per_s, compile_s, prefill_s (the part of time_s spent reading
        prompts: each prompt's first token comes from it).
    """
    a = validate_generate_args(
        model, input_ids, attention_mask, max_new_tokens=max_new_tokens, exit_layer=exit_layer,
        num_speculations=num_speculations, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_token_id=eos_token_id, seed=seed, streamer=streamer, max_cache_len=max_cache_len,
        max_batch_size=max_batch_size, compile=compile, speculation=speculation)
    prompts = a.prompts
    spec = SpeculationConfig(a.exit_layer, a.num_speculations, speculation, draft_vocab, draft_quantization, compile,
                             repetition_penalty, no_repeat_ngram_size, a.do_sample).validate(model)
    check_first_token_ids(first_token_ids, len(prompts), model.config.vocab_size)

    B = len(prompts)
    max_batch_size = B if max_batch_size is None else min(B, max_batch_size)  # checked above
    # One random stream for the batch (fully batched sampling); the Engine API
    # offers per-request seeds that do not depend on the batch.
    seed = int(torch.randint(0, 2**62, ()).item()) if a.seed is None else a.seed
    out: list[list[int]] = [[] for _ in range(B)]

    def row_streamer(b):
        return None if streamer is None else (lambda toks: streamer(b, toks))

    with torch.inference_mode():
        # Built before the clock starts: with compile=True this imports torch's
        # compiler stack, a one-time cost like compilation itself.
        engine = Engine.from_config(model, max_batch_size, spec, seed=seed)
        t0 = time.perf_counter()
        for b, p in enumerate(prompts):
            engine.add_request(Request(p, a.max_new_tokens, frozenset(a.eos_ids), seed, a.temperature, a.top_k,
                                       a.top_p, row_streamer(b),
                                       _allowed(first_token_ids, b)))
        for b, r in enumerate(engine.run()):
            if r.error is not None:  # a streamer raised, or an impossible first token: generate() fails
                raise r.error
            out[b] = r.tokens
    compile_s = engine.steps.compile_s
    elapsed = time.perf_counter() - t0 - compile_s  # decoding only
    return GenerationOutput(sequences=out, stats=_summary(engine.stats, elapsed, compile_s))


def _allowed(first_token_ids, b: int) -> tuple[int, ...] | None:
    """Row b's allowed first tokens, copied (the caller may change its lists later)."""
    row = None if first_token_ids is None else first_token_ids[b]
    return None if row is None else tuple(int(t) for t in row)


def _summary(s: dict, elapsed: float, compile_s: float) -> dict:
    """generate()'s stats from the engine's counts."""
    return dict(
        drafted=s["drafted"],
        accepted=s["accepted"],
        acceptance_rate=s["accepted"] / s["drafted"] if s["drafted"] else None,
        # Tokens emitted per row per decode iteration (1.0 for autoregressive).
        tokens_per_step=s["emitted"] / s["row_steps"] if s["row_steps"] else None,
        steps=s["steps"],
        new_tokens=s["new_tokens"],
        time_s=elapsed,
        tokens_per_s=s["new_tokens"] / elapsed if elapsed > 0 else None,
        compile_s=compile_s,
        prefill_s=s["prefill_s"],
        # Self-speculation: iterations and batched draft steps run at each exit layer.
        iterations_by_exit=dict(s["iterations_by_exit"]),
        draft_steps_by_exit=dict(s["draft_steps_by_exit"]),
    )
