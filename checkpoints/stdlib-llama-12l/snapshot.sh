#!/usr/bin/env bash
# Splits the latest checkpoint.pt into parts under 50 MB (what git hosts accept without
# complaint) with their sha256, ready to commit; train.sh joins them again when
# checkpoint.pt itself is missing (a fresh clone). checkpoint.pt is git-ignored.
set -euo pipefail
HERE=$(cd "${1:-$(dirname "$0")}" && pwd)  # or the run directory given (checkpoints/baseline-12l)
cd "$HERE"
[ -f checkpoint.pt ] || { echo "snapshot.sh: no checkpoint.pt in $HERE" >&2; exit 1; }
rm -f checkpoint.pt.part-* checkpoint.pt.sha256
cp checkpoint.pt checkpoint.pt.snap  # the trainer may replace checkpoint.pt meanwhile
sha256sum checkpoint.pt.snap | sed 's/checkpoint.pt.snap/checkpoint.pt/' > checkpoint.pt.sha256
split -b 45M -d checkpoint.pt.snap checkpoint.pt.part-
rm checkpoint.pt.snap
ls -l checkpoint.pt.part-* checkpoint.pt.sha256
