#!/usr/bin/env bash
# Runs one fuzz target from its seed corpus for a few seconds (the fuzz_test of fuzz.bzl, and
# tools/fuzz.sh for long runs). Fails on a crash, a sanitizer report, a leak, an input that
# takes over 10 s, or one allocation over 64 MiB (no input here justifies one). The input
# that failed is kept in the test's undeclared outputs (or $MTO_FUZZ_ARTIFACTS).
# Usage: run_fuzzer.sh FUZZER SEED_DIR SECONDS
set -euo pipefail
fuzzer=$1
seeds=$2
seconds=$3

work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus"
# The targets write each input as a file under $TEST_TMPDIR.
export TEST_TMPDIR=$work
artifacts=${MTO_FUZZ_ARTIFACTS:-${TEST_UNDECLARED_OUTPUTS_DIR:-$PWD}}
mkdir -p "$artifacts"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-/usr/lib/llvm-14/bin/llvm-symbolizer}

status=0
# New inputs go to the first directory; the seeds are read-only runfiles.
"$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=64 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" "$work/corpus" "$seeds" \
  >"$work/log" 2>&1 || status=$?

name=$(basename "$fuzzer")
name=${name%_fuzzer}
runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$work/log" | tail -1)
if [ "$status" -ne 0 ]; then
  # The report, without libFuzzer's progress lines.
  grep -vE '^(#[0-9]|\s*NEW_FUNC)' "$work/log" | tail -n 80
  echo "$name: FAILED after ${runs:-?} executions (exit $status); input under $artifacts"
  exit 1
fi
echo "$name: ${runs:-?} executions in $seconds s, 0 crashes" \
  "($(ls "$work/corpus" | wc -l) new inputs)"
