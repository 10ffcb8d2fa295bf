#!/usr/bin/env bash
# Runs a test binary on real mpirun ranks inside `bazel test`:
#   run_mpi.sh NUM_RANKS BINARY [ARGS...]
# Ranks are oversubscribed on the machine's cores with one intra-op thread each. Only rank 0
# writes the gtest XML that Bazel reads; every rank's output is tagged with its rank.
set -euo pipefail
ranks=$1
binary=$2
shift 2
export TMPDIR="${TEST_TMPDIR:-${TMPDIR:-/tmp}}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export MTO_COLLECTIVE_TIMEOUT="${MTO_COLLECTIVE_TIMEOUT:-120}"
forward=()
for name in TMPDIR TEST_TMPDIR OMP_NUM_THREADS MKL_NUM_THREADS MTO_COLLECTIVE_TIMEOUT MTO_BACKEND XML_OUTPUT_FILE; do
  if [ -n "${!name+x}" ]; then forward+=(-x "$name"); fi
done
exec mpirun --allow-run-as-root --oversubscribe --bind-to none --tag-output -np "$ranks" "${forward[@]}" \
  bash -c 'if [ "${OMPI_COMM_WORLD_RANK:-0}" != 0 ]; then
             unset XML_OUTPUT_FILE TEST_PREMATURE_EXIT_FILE TEST_SHARD_STATUS_FILE
           fi
           exec "$@"' \
  rank "$(realpath "$binary")" "$@"
