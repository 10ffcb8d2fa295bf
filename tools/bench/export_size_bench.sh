#!/usr/bin/env bash
# Size of a deployable export (mto export: real low-bit weights and their scales) against the
# float checkpoint, per quantize preset, for a GPT whose embeddings and lm_head (kept in float32,
# as Model Optimizer keeps them) are a small share of its weights: the ratio a real language
# model gets. The main job's GPT (width 128, depth 2) has 16 % of its weights there, so its
# ratios stay above these. The model is trained briefly (its size, not its quality, matters),
# quantized with calibration and exported on 2 ranks.
#   tools/bench/export_size_bench.sh [--model-args JSON] [--formats int8,fp8,int4_blockwise,int4_awq]
set -euo pipefail
cd "$(dirname "$0")/../.."
args='{"width": 512, "depth": 4, "heads": 8, "context": 64}'
formats='int8,fp8,int4_blockwise,int4_awq'
while [ $# -gt 0 ]; do
  case "$1" in
    --model-args) args="$2"; shift 2 ;;
    --formats) formats="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "export_size_bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
source tools/bench/cli_bench_setup.sh export-bench
ranks() { mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS "$@" </dev/null; }
# Runs a step quietly; on failure shows its output and stops.
step() {
  local log="$dir/step.log"
  "$@" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
}

echo "gpt $args: training briefly, then quantizing and exporting each of $formats on 2 ranks"
step ranks "$mto" train --model gpt --model-args "$args" --train-samples 256 --epochs 1 --batch-size 16 \
  --out "$dir/float"
float=$(du -sb "$dir/float" | cut -f1)
printf '%-16s %14s %10s\n' format "exported bytes" "vs float"
printf '%-16s %14d %10s\n' float "$float" "1.000x"
for format in ${formats//,/ }; do
  step ranks "$mto" optimize "$dir/float" --mode "quantize:$format" --calib-samples 64 --out "$dir/$format"
  step ranks "$mto" export "$dir/$format" --out "$dir/$format.deployed"
  bytes=$(du -sb "$dir/$format.deployed" | cut -f1)
  awk -v f="$format" -v b="$bytes" -v base="$float" 'BEGIN { printf "%-16s %14d %9.3fx\n", f, b, b / base }'
done
