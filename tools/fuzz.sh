#!/usr/bin/env bash
# Runs every fuzz target of tests/fuzz for SECONDS each (default 600), one after the other,
# and prints executions and crashes per target. The fuzzers are the ones `bazel test //...`
# builds (clang-14, libFuzzer, ASan, UBSan), so a built tree starts at once. Inputs that
# crash are kept under ARTIFACTS (default $TMPDIR/mto-fuzz-artifacts), one folder per target.
#   tools/fuzz.sh [SECONDS [ARTIFACTS]]
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
artifacts=$(realpath -m "${2:-${TMPDIR:-/tmp}/mto-fuzz-artifacts}")

targets=$(bazel query 'kind(sh_test, //tests/fuzz:all)' 2>/dev/null | sed 's#^//tests/fuzz:##')
bazel build $(printf '//tests/fuzz:%s_fuzzer ' $targets) >/dev/null 2>&1 ||
  { echo "tools/fuzz.sh: building the fuzzers failed (bazel build //tests/fuzz:all)" >&2; exit 1; }

# Not bazel-bin, which follows the last build's configuration (--config=fuzz moves it).
bin=$(bazel info bazel-bin 2>/dev/null)
failed=0
for t in $targets; do
  MTO_FUZZ_ARTIFACTS="$artifacts/$t" tests/fuzz/run_fuzzer.sh "$bin/tests/fuzz/${t}_fuzzer" \
    "tests/fuzz/corpus/$t" "$seconds" || failed=$((failed + 1))
done
echo "$(wc -w <<<"$targets") fuzz targets, $failed with crashes"
[ "$failed" -eq 0 ]
