"""Console entry point: `layerskip info | generate | train | export-draft`."""

from __future__ import annotations

import argparse
import json
import sys


def _info(args) -> int:
    import torch

    import layerskip_kernels as lk
    from layerskip_kernels import backends

    print(f"layerskip-kernels {lk.__version__}, torch {torch.__version__}")
    native = backends.native()
    print("build_info:", json.dumps(native.build_info(), sort_keys=True) if native else "(extension not built)")
    for name, reason in lk.available_backends().items():
        print(f"  {name:7s} {'available' if reason is None else 'unavailable: ' + reason}")
    print("ops by backend (reference: the backend has no kernel for the op and runs reference.py):")
    print("\n".join("  " + line for line in backends.table().splitlines()))
    try:
        print("default model:", lk.default_model_path())
    except FileNotFoundError as e:
        print("default model:", e)
    return 0


def _export_draft(args) -> int:
    from layerskip_kernels.model.export import export_draft

    try:
        out = export_draft(args.model, args.exit_layer, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}: layers 0..{args.exit_layer - 1} + final norm + LM head of {args.model}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="layerskip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build flags, available backends, the op x backend table, default model")

    from layerskip_kernels.generation.cli import add_arguments as add_generate

    add_generate(sub.add_parser("generate", help="generate text (autoregressive or self-speculative)"))
    from layerskip_kernels.train.cli import add_arguments as add_train

    add_train(sub.add_parser("train", help="train a LayerSkip model on Python source files"))
    ex = sub.add_parser("export-draft", help="write the first E layers + final norm + LM head as a standalone "
                                             "Llama checkpoint (a draft model for vLLM's draft_model method)")
    ex.add_argument("--exit-layer", type=int, required=True, help="E: the draft's number of layers (1..L-1)")
    ex.add_argument("model", help="model directory (Hugging Face Llama layout)")
    ex.add_argument("out", help="output directory (new or empty)")

    args = parser.parse_args(argv)
    if args.command == "info":
        return _info(args)
    if args.command == "export-draft":
        return _export_draft(args)
    if args.command == "generate":
        from layerskip_kernels.generation.cli import run

        return run(args)
    from layerskip_kernels.train.cli import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
