#!/usr/bin/env bash
# Runs the quantization benchmark on 1, 2 and 4 ranks (oversubscribed on this machine's cores).
#   tools/bench/quantize_bench.sh [--checkpoint DIR] [--calib-samples N]
set -euo pipefail
cd "$(dirname "$0")/../.."
bazel build //tools/bench:quantize_bench >/dev/null 2>&1 || bazel build //tools/bench:quantize_bench
for ranks in 1 2 4; do
  echo "== $ranks rank(s)"
  OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$ranks" \
    -x OMP_NUM_THREADS bazel-bin/tools/bench/quantize_bench "$@"
done
