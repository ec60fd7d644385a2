"""`layerskip generate`: stream a completion of a prompt, then one stats line."""

from __future__ import annotations

import os
import sys


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
    p.add_argument("--backend", default=None, choices=["torch", "cpu", "triton", "cuda"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    import torch
    from tokenizers import Tokenizer

    import layerskip_kernels as lk

    path = args.model if args.model is not None else lk.default_model_path()
    tok_file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tok_file):
        raise SystemExit(f"error: {path} has no tokenizer.json")
    tokenizer = Tokenizer.from_file(tok_file)
    model = lk.LlamaForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype), device=args.device)
    defaults = model.config.extra.get("layerskip", {})
    exit_layer = args.exit_layer if args.exit_layer is not None else defaults.get("default_exit_layer")
    k = args.num_speculations if args.num_speculations is not None else defaults.get("default_num_speculations", 4)
    if exit_layer == 0:
        exit_layer = None

    ids = tokenizer.encode(args.prompt).ids
    if not ids:
        raise SystemExit("error: the prompt encodes to no tokens")
    generated: list[int] = []
    shown = [""]

    def stream(row, tokens):
        generated.extend(tokens)
        text = tokenizer.decode(generated)
        # Byte-level BPE may end mid-character: hold back an incomplete tail.
        if text.endswith("\ufffd"):
            return
        sys.stdout.write(text[len(shown[0]):])
        sys.stdout.flush()
        shown[0] = text

    sys.stdout.write(args.prompt)
    with lk.use_backend(args.backend):
        out = lk.generate(model, [ids], max_new_tokens=args.max_new_tokens, exit_layer=exit_layer,
                          num_speculations=k, do_sample=args.sample, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed, streamer=stream)
    tail = tokenizer.decode(generated)[len(shown[0]):]
    sys.stdout.write(tail + "\n")
    sys.stdout.flush()  # the text before the stats line on a shared terminal
    s = out.stats
    mode = f"self-speculative E={exit_layer} k={k}" if exit_layer else "autoregressive"
    acc = f"{s['acceptance_rate']:.1%}" if s["acceptance_rate"] is not None else "n/a"
    tps = f"{s['tokens_per_step']:.2f}" if s["tokens_per_step"] is not None else "n/a"
    print(f"[{mode}] {s['new_tokens']} tokens in {s['time_s']:.2f} s: {s['tokens_per_s']:.1f} tokens/s, "
          f"acceptance {acc}, {tps} tokens/iteration, backend "
          f"{args.backend or lk.backends.resolve(torch.device(args.device))}", file=sys.stderr)
    return 0
