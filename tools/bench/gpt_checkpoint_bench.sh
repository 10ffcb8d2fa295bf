#!/usr/bin/env bash
# Runs the tensor-parallel GPT checkpoint benchmark on 4 ranks (oversubscribed on this
# machine's cores), passing its arguments through:
#   tools/bench/gpt_checkpoint_bench.sh [--width 2048] [--depth 16] [--tp 4] [--repeat 3]
#                                       [--dir DIR] [--restore-tp 4,2,1]
# The defaults make a 3.2 GB model (0.8 GB per rank at tp 4; 3.2 GB per rank when restored
# at tp 1); a quick check: --width 256 --depth 2 --repeat 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
bazel build //tools/bench:gpt_checkpoint_bench >/dev/null 2>&1 || bazel build //tools/bench:gpt_checkpoint_bench
# Not bazel-bin: that link follows whichever configuration was built last in this workspace.
binary="$(bazel info bazel-bin 2>/dev/null)/tools/bench/gpt_checkpoint_bench"
OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -np 4 \
  -x OMP_NUM_THREADS "$binary" "$@"
