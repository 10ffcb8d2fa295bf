#!/usr/bin/env bash
# Runs the README's C++ examples (tools/examples/quantize_save_restore and prune_save_restore)
# on real mpirun ranks with few Fashion-MNIST images, checks what they print, and checks the
# checkpoints they write with the command line: verified byte for byte and holding the modes
# the README says, and restored and evaluated on another world size.
#   cpp_examples_test.sh RANKS OTHER_RANKS QUANTIZE_BINARY PRUNE_BINARY MTO_BINARY
# Writes one JUnit test case per check to $XML_OUTPUT_FILE.
set -uo pipefail
ranks_count=$1
other_ranks=$2
quantize=$(realpath "$3")
prune=$(realpath "$4")
mto=$(realpath "$5")
work="${TEST_TMPDIR:-$(mktemp -d)}/cpp-examples"
mkdir -p "$work"
source "$(dirname "$0")/cli_harness.sh" "cpp_examples_${ranks_count}_ranks"

# expect_line OUTPUT PATTERN: exactly one line of OUTPUT matches PATTERN (only rank 0 prints).
expect_line() {
  [ "$(grep -c -- "$2" <<<"$1")" = 1 ] || { echo "expected one line matching '$2', got:"; echo "$1"; return 1; }
}

# expect_inspect DIR PATTERN...: `mto inspect DIR --verify` succeeds and shows every pattern.
expect_inspect() {
  local dir=$1 out pattern
  shift
  out=$("$mto" inspect "$dir" --verify 2>&1) || { echo "$out"; return 1; }
  for pattern in "verified     every checksum matches" "written by   mto .* on $ranks_count rank" "$@"; do
    grep -q -- "$pattern" <<<"$out" || { echo "missing '$pattern' in:"; echo "$out"; return 1; }
  done
}

# expect_eval DIR: the checkpoint restores and evaluates on the other world size.
expect_eval() {
  local out
  out=$(ranks "$other_ranks" "$mto" eval "$1" --samples 64 --json 2>&1) || { echo "$out"; return 1; }
  grep -q '"samples":64' <<<"$out" && grep -q "\"ranks\":$other_ranks" <<<"$out" || { echo "$out"; return 1; }
}

quantize_example() {
  local out
  out=$(ranks "$ranks_count" "$quantize" "$work/int8" 128 2>&1) || { echo "$out"; return 1; }
  expect_line "$out" "^$ranks_count rank(s): quantized fashion_cnn to int8 (calibrated on 128 images), saved $work/int8, restored it: outputs bit-identical on $ranks_count/$ranks_count ranks$"
}

quantize_checkpoint() {
  expect_inspect "$work/int8" "model-like   fashion_cnn" "1. quantize" "2. max_calibrate" \
    "conv1.weight_quantizer._amax" "mesh         (dp=$ranks_count, tp=1)" || return 1
  expect_eval "$work/int8"
}

prune_example() {
  local out
  out=$(ranks "$ranks_count" "$prune" "$work/pruned" 512 128 4 2>&1) || { echo "$out"; return 1; }
  expect_line "$out" "^$ranks_count rank(s): trained fashion_cnn on 512 images (validation accuracy [0-9.]*%), searched 4 candidates within params=0.5: [0-9]* of [0-9]* parameters, validation accuracy [0-9.]*%; saved $work/pruned, restored it: outputs bit-identical on $ranks_count/$ranks_count ranks$" || return 1
  # The subnet the search chose holds at most half of the parameters.
  local params full
  params=$(sed -nE 's/.*: ([0-9]+) of ([0-9]+) parameters.*/\1/p' <<<"$out")
  full=$(sed -nE 's/.*: ([0-9]+) of ([0-9]+) parameters.*/\2/p' <<<"$out")
  awk -v p="$params" -v f="$full" 'BEGIN { exit !(p > 0 && 2 * p <= f) }' || { echo "$params of $full parameters"; return 1; }
}

prune_checkpoint() {
  expect_inspect "$work/pruned" "model-like   fashion_cnn" "1. fastnas" "2. export_nas" || return 1
  expect_eval "$work/pruned"
}

check quantize_example quantize_example
check quantize_checkpoint quantize_checkpoint
check prune_example prune_example
check prune_checkpoint prune_checkpoint
finish
