#!/usr/bin/env bash
# Crash injection, N trials (50 in the suite; 1000 by hand for the long run):
#
#   tests/reliability/crash_loop.sh N [SEED] [MPI_EVERY]
#
# Kills a saving process (a forked child, or, every MPI_EVERY-th trial (default 5), one rank
# of mpirun -np 2|3) at chosen moments of a save and checks the checkpoint directory after
# every kill; see crash_harness.cc. Under
# `bazel test` the binaries come from the runfiles (CRASH_HARNESS, CHECKPOINT_WORKER); by
# hand from bazel-bin (`bazel build //tests/reliability:all` first).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
harness=$(realpath "${CRASH_HARNESS:-$root/bazel-bin/tests/reliability/crash_harness}")
worker=$(realpath "${CHECKPOINT_WORKER:-$root/bazel-bin/tests/reliability/checkpoint_worker}")
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
exec "$harness" "${1:-50}" "$worker" "${2:-12345}" "${3:-5}"
