#!/usr/bin/env bash
# The 12-layer default model's training run (docs/training.md). Run from anywhere;
# rerun to resume: it adds --resume when the checkpoint exists. The checkpoint and
# the curve live in this directory and are committed at the end of each session
# (snapshot.sh splits checkpoint.pt, 81 MB with bf16 Adam moments, into parts under
# 50 MB; this script joins them on a fresh clone), so the run survives the loss of
# the machine it ran on. The model directory is rewritten at every checkpoint.
# SIGTERM or Ctrl-C stops it after the current step, with a checkpoint.
# RUN_DIR / OUT move the checkpoint, curve and model elsewhere; extra arguments go to
# the trainer (checkpoints/baseline-12l/train.sh runs the baseline this way).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=${RUN_DIR:-$ROOT/checkpoints/stdlib-llama-12l}
OUT=${OUT:-$ROOT/runs/stdlib-llama-12l}
mkdir -p "$HERE"
cd "$ROOT"
PY=${PYTHON:-python}
if [ ! -f "$HERE/checkpoint.pt" ] && [ -f "$HERE/checkpoint.pt.sha256" ]; then
  cat "$HERE"/checkpoint.pt.part-* > "$HERE/checkpoint.pt.tmp"
  (cd "$HERE" && sed 's/checkpoint.pt$/checkpoint.pt.tmp/' checkpoint.pt.sha256 | sha256sum -c --quiet)
  mv "$HERE/checkpoint.pt.tmp" "$HERE/checkpoint.pt"
fi
RES=""; [ -f "$HERE/checkpoint.pt" ] && RES=--resume
exec nice -n 19 "$PY" -m layerskip_kernels.train.cli --out "$OUT" --checkpoint-dir "$HERE" \
  --log-csv "$HERE/train_log.csv" --tokenizer layerskip_kernels/assets/stdlib-llama/tokenizer.json \
  --layers 12 --hidden 256 --intermediate 768 --heads 8 --kv-heads 2 --seq-len 512 --batch-size 8 \
  --lr 2e-3 --warmup-steps 200 --p-max 0.2 --dropout-schedule exp --e-scale 4.0 --exit-weighting flat \
  --draft-exit 3 --curriculum rotational --rotation 3 --checkpoint-moments bf16 \
  --steps 9000 --minutes 1000000 --threads 2 --seed 0 --eval-every 250 --save-every-min 10 --no-progress $RES "$@"
