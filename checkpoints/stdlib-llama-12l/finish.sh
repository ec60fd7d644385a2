#!/usr/bin/env bash
# What is left once train.sh has reached its last step (docs/training.md, "Finishing"),
# in order, each benchmark on a quiet machine. Run from anywhere, venv active:
#   checkpoints/stdlib-llama-12l/finish.sh            # every step
#   checkpoints/stdlib-llama-12l/finish.sh sweep e2e  # some of them, by name
# Steps: curve eval sweep defaults e2e quality assets adaptive compile serving draftvocab
# The benchmarks refuse to start while a training process runs (their timings would be
# worthless); every row they write carries NOTE.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python}
M=${MODEL:-$ROOT/runs/stdlib-llama-12l}
R=bench/results
NOTE=${NOTE:-"quiet machine: nothing else running (finish.sh checked for training processes)"}
ALL="curve eval sweep defaults e2e quality assets adaptive compile serving draftvocab"
STEPS=${*:-$ALL}
SWEEP_EXITS=${SWEEP_EXITS:-"1 2 3 4 5 6"}

quiet() {
  if pgrep -f "layerskip_kernels.train.cli" >/dev/null; then
    echo "finish.sh: a training process is running; benchmarks need a quiet machine" >&2
    exit 1
  fi
}
say() { echo "== $(date +%H:%M:%S) $*"; }

for step in $STEPS; do
  case $step in
    curve)
      say "training curve"
      cp "$HERE/train_log.csv" $R/train_curve_12l.csv
      $PY -m layerskip_kernels.train.plot $R/train_curve_12l.csv --labels layerskip-12l --exits 2 3 6 --out $R/train_curve_12l.png ;;
    eval)
      say "per-exit accuracy, CE and agreement on held-out files"
      $PY -m layerskip_kernels.train.evaluate --models "$M" --labels 12l-run2 --tokens 100000 --threads 2 \
        --out $R/early_exit_eval_12l ;;
    sweep)
      quiet; say "E x k sweep (batch 1; the headline rows are redone by 'e2e' at the chosen defaults)"
      # exits 1..L/2: at step 3999 exit 3 already drafted 88% acceptance at k = 3
      # (token counts), and a draft step above L/2 costs over half a full step
      $PY bench/bench_e2e.py --model "$M" --batch-sizes 1 --no-hf --sweep-exit-layers $SWEEP_EXITS \
        --out $R/e2e --note "$NOTE" ;;
    defaults)
      say "record the sweep's best (E, k) in the model's config.json"
      $PY - "$M" $R/e2e_sweep.csv <<'PY'
import csv, json, os, sys
model, sweep = sys.argv[1], sys.argv[2]
rows = [r for r in csv.DictReader(open(sweep)) if r["batch"] == "1"]
# min(measured, analytic): a single noisy timing cannot pick a configuration the model's
# acceptance does not support, nor an analytic limit the engine does not reach.
score = lambda r: min(float(r["speedup"]), float(r["analytic_limit"]))
rows.sort(key=score, reverse=True)
best = rows[0]
for r in rows[:5]:
    print(f"E={r['exit_layer']} k={r['k']}: speedup {float(r['speedup']):.3f}, limit {float(r['analytic_limit']):.3f}")
path = os.path.join(model, "config.json")
cfg = json.load(open(path))
ls = cfg.setdefault("layerskip", {})
ls["default_exit_layer"], ls["default_num_speculations"] = int(best["exit_layer"]), int(best["k"])
ls["defaults_chosen_by"] = f"bench/bench_e2e.py sweep ({sweep}): best min(measured speedup, analytic limit) at batch 1, bf16"
json.dump(cfg, open(path, "w"), indent=2, sort_keys=True)
print(f"default E={best['exit_layer']} k={best['k']}: speedup {float(best['speedup']):.3f}, "
      f"acceptance {float(best['acceptance']):.3f}")
PY
      ;;
    e2e)
      quiet; say "ours vs transformers at the recorded defaults, batch 1 and 8"
      $PY bench/bench_e2e.py --model "$M" --no-sweep --out $R/e2e --note "$NOTE" ;;
    quality)
      say "repetition with and without the decoding aids (token counts)"
      $PY bench/bench_quality.py --model "$M" --out $R/quality ;;
    assets)
      say "the model becomes the embedded default"
      A=layerskip_kernels/assets/stdlib-llama
      for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json; do
        cp "$M/$f" "$A/$f"
      done
      # token_frequencies.npy (read from a legacy .safetensors too; vLLM loads every *.safetensors as weights)
      $PY -c "import sys; from layerskip_kernels.vocab import load_frequencies as l, save_frequencies as s; s(sys.argv[2], l(sys.argv[1]))" "$M" "$A" ;;
    compile)
      quiet; say "compiled steps vs eager vs transformers (issue 14)"
      $PY bench/bench_compile.py --note "$NOTE" ;;
    adaptive)
      quiet; say "adaptive vs best static drafting (issue 15); the faster becomes the CLI's default"
      $PY bench/bench_adaptive.py --sweep-exit-layers $SWEEP_EXITS --record --note "$NOTE"
      cp layerskip_kernels/assets/stdlib-llama/config.json "$M/config.json" ;;  # the record, in both
    serving)
      quiet; say "continuous batching, eager and compiled (issue 16)"
      $PY bench/bench_serving.py --note "$NOTE"
      $PY bench/bench_serving.py --compile --batch-sizes 8 --out $R/serving_compiled --note "$NOTE"
      $PY bench/bench_serving.py --compile --speculation adaptive --batch-sizes 8 \
        --out $R/serving_compiled_adaptive --note "$NOTE" ;;
    draftvocab)
      say "reduced draft vocabulary: coverage and agreement (token counts)"
      $PY bench/bench_draft_vocab.py --note "12-layer default model" ;;
    *)
      echo "finish.sh: unknown step '$step' (steps: $ALL)" >&2; exit 2 ;;
  esac
done
say "done: $STEPS"
