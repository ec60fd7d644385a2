"""Plot training curves written by the trainer (one CSV per run).

    python -m layerskip_kernels.train.plot \
        bench/results/train_curve.csv bench/results/train_curve_baseline.csv \
        --labels layerskip baseline --out bench/results/train_curve.png

Left: training loss (smoothed) against wall time. Right: held-out
cross-entropy at a few exit layers against training tokens.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

__all__ = ["read_curve", "main"]


def read_curve(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _f(v):
    return float(v) if v not in ("", None) else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m layerskip_kernels.train.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csvs", nargs="+")
    p.add_argument("--labels", nargs="+", default=None)
    p.add_argument("--out", default="bench/results/train_curve.png")
    p.add_argument("--exits", nargs="+", type=int, default=[2, 4],
                   help="exit layers (1-based) whose held-out CE is drawn besides the last (default: 2 4)")
    args = p.parse_args(argv)
    labels = args.labels or [os.path.splitext(os.path.basename(c))[0] for c in args.csvs]
    if len(labels) != len(args.csvs):
        p.error(f"--labels has {len(labels)} names for {len(args.csvs)} files")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    styles = (":", "--", "-.", (0, (1, 4)))  # one per requested exit; the last layer is solid
    exits = sorted(set(args.exits))
    for i, (path, label) in enumerate(zip(args.csvs, labels)):
        rows = read_curve(path)
        if not rows:
            continue
        color = f"C{i}"
        # Final-layer training loss when logged (every step logs the last layer).
        L = sum(1 for k in rows[0] if k.startswith("val_loss_l"))
        key = f"loss_l{L - 1}"
        xs, ys, ema = [], [], None
        for r in rows:
            v = _f(r.get(key))
            if v is None:
                continue
            ema = v if ema is None else 0.95 * ema + 0.05 * v
            xs.append(float(r["wall_s"]) / 60)
            ys.append(ema)
        ax1.plot(xs, ys, color=color, label=f"{label}: last layer")
        evals = [r for r in rows if _f(r.get(f"val_loss_l{L - 1}")) is not None]
        tokens = [int(r["tokens"]) / 1e6 for r in evals]
        if any(not 1 <= e < L for e in exits):
            p.error(f"--exits must be exit layers 1..{L - 1} of the {L}-layer run in {path}, got {args.exits}")
        for e, style in [(e, styles[i % len(styles)]) for i, e in enumerate(exits)] + [(L, "-")]:
            ax2.plot(tokens, [float(r[f"val_loss_l{e - 1}"]) for r in evals], style, color=color,
                     label=f"{label}: exit E={e}")
    ax1.set(xlabel="wall time (min)", ylabel="train CE, last layer (EMA)", title="training loss")
    ax2.set(xlabel="training tokens (M)", ylabel="held-out CE", title="held-out loss by exit layer")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
