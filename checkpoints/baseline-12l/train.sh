#!/usr/bin/env bash
# The baseline of the 12-layer default model (docs/training.md): run 2's command,
# schedule and data order with --no-layerskip (no layer dropout, the loss on the
# last layer only), stopped at step 2000 of the same 9000-step cosine and compared
# with run 2's curve there. Checkpoint and curve live in this directory (commit
# them with ../stdlib-llama-12l/snapshot.sh's parts when a session ends mid-run);
# rerun to resume.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUN_DIR=$HERE OUT=$ROOT/runs/baseline-12l exec "$ROOT/checkpoints/stdlib-llama-12l/train.sh" \
  --no-layerskip --stop-at-step 2000 "$@"
