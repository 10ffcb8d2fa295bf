#!/usr/bin/env bash
# Runs the checkpoint benchmark on 1, 2 and 4 ranks (oversubscribed on this machine's cores).
#   tools/bench/checkpoint_bench.sh [--mib 1024] [--repeat 3] [--dir DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
bazel build -c opt //tools/bench:checkpoint_bench >/dev/null 2>&1 || bazel build -c opt //tools/bench:checkpoint_bench
# Not bazel-bin: that link follows whichever configuration was built last in this workspace.
binary="$(bazel info -c opt bazel-bin 2>/dev/null)/tools/bench/checkpoint_bench"
for ranks in 1 2 4; do
  echo "== $ranks rank(s)"
  OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$ranks" \
    -x OMP_NUM_THREADS "$binary" "$@"
done
