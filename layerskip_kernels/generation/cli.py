"""`layerskip generate`: stream a completion of a prompt, then one stats line.

Every value argparse does not type-check is validated before the prompt is
echoed; a bad one ends in one `error: ...` line on stderr and exit status 2
(a bad flag value) or 1 (an unusable model or tokenizer file), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..backends.registry import BACKENDS


def add_arguments(p) -> None:
    p.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--exit-layer", type=int, default=None,
                   help="draft with layers [0, E) (default: the model's recorded default; 0 = autoregressive)")
    p.add_argument("--num-speculations", type=int, default=None, help="drafted tokens per iteration (k)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="transformers' repetition penalty over prompt + output; 1.0 is off (default: the model's "
                        "generation_config.json, else 1.0)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None,
                   help="never repeat an n-gram of prompt + output; 0 is off (default: the model's "
                        "generation_config.json, else 0)")
    p.add_argument("--no-token-healing", action="store_true",
                   help="keep the prompt's last token as encoded (default: back it up and let the first "
                        "generated token complete it; see generation/token_healing.py)")
    p.add_argument("--no-bos", action="store_true",
                   help="encode the prompt without the tokenizer's special tokens, to continue text from the "
                        "middle of a file (default: as the tokenizer encodes it; the embedded model's tokenizer "
                        "starts a prompt with <|endoftext|>, as every file starts in training)")
    p.add_argument("--speculation", default=None, choices=["static", "adaptive"],
                   help="static: fixed exit layer and k; adaptive: per-row draft lengths (confidence stop, k from "
                        "each row's acceptance, at most --num-speculations) and the exit layer chosen per iteration "
                        "(default: the model's layerskip.default_speculation, else static)")
    p.add_argument("--draft-vocab", type=int, default=None,
                   help="the draft head scores only this many of the most frequent training tokens "
                        "(the model's token_frequencies.npy); verification scores all; 0 is all "
                        "(default: the model's layerskip.default_draft_vocab, else 0)")
    p.add_argument("--draft-quantization", default=None, choices=["none", "int8"],
                   help="int8: the draft scores with an int8 copy of the LM head (half its bytes per draft "
                        "step); verification uses the model's own head, so output is unchanged "
                        "(default: the model's layerskip.default_draft_quantization, else none)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="compile the decode steps with torch.compile (CUDA graphs on a GPU); off by default: "
                        "on CPU the first compile costs more than it saves on a default-length generation "
                        "(README); the compile time is printed apart from tokens/s")
    p.add_argument("--compare", action="store_true",
                   help="also decode the prompt autoregressively (same flags, same loaded model), after a short "
                        "warm-up run of each mode: prints both speed lines and the ratio, and checks that greedy "
                        "tokens are identical (sampled tokens come from the same seed and distribution and are not "
                        "compared token for token)")
    p.add_argument("--backend", default=None, choices=list(BACKENDS))
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32", "float16"],
                   help="weight dtype; auto: the one measured fastest for this device and CPU level "
                        "(layerskip_kernels.model.dtypes)")
    p.add_argument("--device", default="cpu")


class _Refused(Exception):
    """One line for stderr and the exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(" ".join(message.split("\n")))
        self.status = status


def _usage(message: str) -> _Refused:
    return _Refused(message, 2)


def _unusable(message: str) -> _Refused:
    return _Refused(message, 1)


def _check_flags(args):
    """Checks that need no model; returns the device."""
    from ..model.loading import check_device
    from . import validation as v

    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise _usage("--prompt is not valid UTF-8 (undecodable bytes on the command line)") from None
    try:
        v.check_int("--max-new-tokens", args.max_new_tokens, 1)
        if args.num_speculations is not None:
            v.check_int("--num-speculations", args.num_speculations, 1, v.MAX_SPECULATIONS)
        # Checked with or without --sample: a value given is a value meant.
        v.check_temperature(args.temperature, "--temperature")
        v.check_top_k(args.top_k, "--top-k")
        v.check_top_p(args.top_p, "--top-p")
        if args.seed is not None:
            v.check_seed(args.seed, "--seed")
        if args.draft_vocab is not None:
            v.check_int("--draft-vocab", args.draft_vocab, 0)
        if args.no_repeat_ngram_size is not None:
            v.check_int("--no-repeat-ngram-size", args.no_repeat_ngram_size, 0)
        if args.repetition_penalty is not None:
            v.check_repetition_penalty(args.repetition_penalty, "--repetition-penalty")
    except ValueError as e:
        raise _usage(str(e)) from None
    try:
        device = check_device(args.device)
    except ValueError as e:
        raise _usage(f"--device {args.device!r}: {e}") from None
    import layerskip_kernels as lk

    try:  # with no --backend: LAYERSKIP_BACKEND, checked like the flag before anything is printed
        with lk.use_backend(args.backend):
            lk.backends.resolve(device)
    except (ValueError, lk.backends.BackendUnavailableError) as e:
        where = f"--backend {args.backend}" if args.backend is not None else "LAYERSKIP_BACKEND"
        raise _usage(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    return device


def _load(args, device):
    """The tokenizer and the model, or the one line saying why they cannot be used."""
    import torch
    from tokenizers import Tokenizer

    import layerskip_kernels as lk
    from ..model.dtypes import decode_dtype
    from ..model.loading import model_file

    try:
        path = args.model if args.model is not None else lk.default_model_path()
    except FileNotFoundError as e:
        raise _unusable(str(e)) from None
    if not os.path.isdir(path):
        raise _unusable(f"--model {path} is not a directory")
    try:
        tok_file = model_file(path, "tokenizer.json")
    except ValueError as e:
        raise _unusable(str(e)) from None
    if not os.path.isfile(tok_file):
        raise _unusable(f"{path} has no tokenizer.json")
    try:
        tokenizer = Tokenizer.from_file(tok_file)
    except Exception as e:  # tokenizers raises a bare Exception for any bad file
        raise _unusable(f"{tok_file} is not a valid tokenizer file: {e}") from None
    if args.dtype == "auto":  # resolved once: --compare's exactness rule reads the dtype that ran
        args.dtype = str(decode_dtype(device)).removeprefix("torch.")
    try:
        model = lk.LlamaForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype), device=device)
    except (ValueError, OSError) as e:
        raise _unusable(str(e)) from None
    return path, tokenizer, model


def _plan(args, path, tokenizer, model):
    """The decoding settings (flags over the model's recorded defaults:
    SpeculationConfig.from_model) and the prompt ids, all checked against the model."""
    from . import validation as v
    from .config import SpeculationConfig

    cfg = model.config
    L = cfg.num_hidden_layers
    if args.exit_layer is not None:
        try:
            v.check_int("--exit-layer", args.exit_layer, 0, L - 1, f" for this {L}-layer model (0 = autoregressive)")
        except ValueError as e:
            raise _usage(str(e)) from None
    if args.draft_vocab is not None and args.draft_vocab > cfg.vocab_size:
        raise _usage(f"--draft-vocab must be at most the vocabulary size {cfg.vocab_size}, got {args.draft_vocab}")
    try:
        spec = SpeculationConfig.from_model(
            path, model, exit_layer=args.exit_layer, num_speculations=args.num_speculations,
            speculation=args.speculation, draft_vocab=args.draft_vocab, draft_quantization=args.draft_quantization,
            repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
            compile=args.compile, do_sample=args.sample)
    except ValueError as e:
        raise _unusable(str(e)) from None

    if not tokenizer.encode(args.prompt, add_special_tokens=False).ids:
        raise _usage("--prompt encodes to no tokens")
    ids = tokenizer.encode(args.prompt, add_special_tokens=not args.no_bos).ids
    P = cfg.max_position_embeddings
    if len(ids) + args.max_new_tokens > P:
        raise _usage(f"--prompt of {len(ids)} tokens + --max-new-tokens {args.max_new_tokens} exceeds the model's "
                     f"max_position_embeddings={P}")
    try:  # what generate() itself will check (memory included), before anything is printed
        v.validate_generate_args(
            model, [ids], None, max_new_tokens=args.max_new_tokens, exit_layer=spec.exit_layer,
            num_speculations=spec.num_speculations, do_sample=args.sample, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, eos_token_id=None, seed=args.seed, streamer=None,
            max_cache_len=None, compile=args.compile, speculation=spec.speculation)
    except ValueError as e:
        raise _usage(str(e)) from None
    if args.compare and not spec.exit_layer:
        raise _usage("--compare compares self-speculative with autoregressive decoding, but this run is "
                     "autoregressive already (--exit-layer 0, or the model records no default exit layer)")
    return spec, ids


def run(args) -> int:
    import torch

    import layerskip_kernels as lk

    try:
        device = _check_flags(args)
        path, tokenizer, model = _load(args, device)
        spec, ids = _plan(args, path, tokenizer, model)
    except _Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return e.status
    from .token_healing import heal_prompt

    # Token healing: the model continues from the prompt minus its last token,
    # whose text the first generated token must start with.
    healing = None if args.no_token_healing else heal_prompt(tokenizer, ids)
    prefix = ids if healing is None or healing.allowed is None else healing.ids
    first = None if prefix is ids else [healing.allowed]
    start = len(tokenizer.decode(ids))  # the completion is what follows the prompt's own text
    generated: list[int] = []
    shown = [start]

    def completion():
        text = tokenizer.decode(prefix + generated)
        # Byte-level BPE may end mid-character: hold back an incomplete tail.
        return None if text.endswith("\ufffd") or len(text) < start else text

    def stream(row, tokens):
        generated.extend(tokens)
        text = completion()
        if text is not None:
            sys.stdout.write(text[shown[0]:])
            sys.stdout.flush()
            shown[0] = len(text)

    sys.stdout.write(args.prompt)
    kwargs = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                  first_token_ids=first)
    with lk.use_backend(args.backend):
        if args.compare:  # first-call costs (allocation, kernel setup) paid by neither timed run
            for s in (spec, _autoregressive(spec)):
                lk.generate(model, [prefix], max_new_tokens=min(8, args.max_new_tokens), **kwargs,
                            **s.generate_kwargs())
        out = lk.generate(model, [prefix], max_new_tokens=args.max_new_tokens, streamer=stream, **kwargs,
                          **spec.generate_kwargs())
    tail = tokenizer.decode(prefix + generated)[shown[0]:]
    sys.stdout.write(tail + "\n")
    sys.stdout.flush()  # the text before the stats line on a shared terminal
    backend = args.backend or lk.backends.resolve(torch.device(args.device))
    print(_stats_line(args, spec, out.stats, backend), file=sys.stderr)
    if not args.compare:
        return 0
    ar_spec = _autoregressive(spec)
    with lk.use_backend(args.backend):
        ar = lk.generate(model, [prefix], max_new_tokens=args.max_new_tokens, **kwargs, **ar_spec.generate_kwargs())
    print(_stats_line(args, ar_spec, ar.stats, backend), file=sys.stderr)
    print(_comparison(args, out, ar), file=sys.stderr)
    # Token-for-token identity is the contract in float32; in 16-bit dtypes the
    # verify pass (k+1 rows) and the one-row step may round a near tie apart.
    return 1 if _differs(args, out, ar) and args.dtype == "float32" else 0


def _differs(args, spec_out, ar_out) -> bool:
    return not args.sample and spec_out.sequences != ar_out.sequences


def _autoregressive(spec):
    """The same settings (decoding aids, sampling, compilation) without drafting."""
    from dataclasses import replace

    return replace(spec, exit_layer=None, speculation="static", draft_vocab=None, draft_quantization=None)


def _stats_line(args, spec, s: dict, backend) -> str:
    E, k = spec.exit_layer, spec.num_speculations
    mode = f"self-speculative E={E} k={k}" if E else "autoregressive"
    if E and spec.speculation == "adaptive":
        near = "~" if spec.adaptive.get("bandit", False) else "="  # the bandit moves E around it
        mode = f"self-speculative adaptive E{near}{E} k<={k}"
    if E and spec.draft_vocab is not None:
        mode += f" draft-vocab={len(spec.draft_vocab)}"
    if E and spec.draft_quantization:
        mode += f" draft-head={spec.draft_quantization}"
    acc = f"{s['acceptance_rate']:.1%}" if s["acceptance_rate"] is not None else "n/a"
    tps = f"{s['tokens_per_step']:.2f}" if s["tokens_per_step"] is not None else "n/a"
    compiled = f", compiled (+{s['compile_s']:.1f} s compiling)" if args.compile else ""
    return (f"[{mode}] {s['new_tokens']} tokens in {s['time_s']:.2f} s: {s['tokens_per_s']:.1f} tokens/s, "
            f"acceptance {acc}, {tps} tokens/iteration, {args.dtype}, backend {backend}{compiled}")


def _comparison(args, spec_out, ar_out) -> str:
    """The --compare verdict: the speed ratio and whether the outputs agree."""
    ratio = spec_out.stats["tokens_per_s"] / ar_out.stats["tokens_per_s"]
    line = f"[compare] self-speculative / autoregressive: {ratio:.2f}x tokens/s; "
    if args.sample:
        return line + ("sampled tokens: same seed and the same distribution, not compared token for token "
                       "(speculative sampling is exact in distribution, not per token)")
    a, b = spec_out.sequences[0], ar_out.sequences[0]
    if a == b:
        return line + f"greedy tokens identical ({len(a)} tokens)"
    i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    line += f"greedy tokens differ from token {i} on (self-speculative {a[i:i + 4]}, autoregressive {b[i:i + 4]})"
    if args.dtype == "float32":
        return "ERROR: " + line + ": please report this line"
    return line + f" in {args.dtype}, where the verify pass (k+1 rows) and a one-row step may round a near tie " \
                  "apart; --dtype float32 checks exactness"
