#!/usr/bin/env bash
# Writes a checkpoint of the 8 MB model on 3 mpirun ranks (3 shards), then flips single bits
# in every file of it, one at a time, with bit_flip_check (one process), which counts
# detected/tried per file kind.
#
#   bit_flip_test.sh WORKER BIT_FLIP_CHECK
set -euo pipefail
worker=$(realpath "$1")
check=$(realpath "$2")
work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/bit-flip-XXXXXX")
export TMPDIR=$work OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mpirun --allow-run-as-root --oversubscribe --bind-to none -np 3 -x TMPDIR -x OMP_NUM_THREADS \
  "$worker" save "$work/ckpt" 7 8
ls -l "$work/ckpt"
"$check" "$work/ckpt" 7 8
rm -rf "$work"
