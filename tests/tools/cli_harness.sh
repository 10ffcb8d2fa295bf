# Shared by the end-to-end tests of the `mto` command line (sourced, not run): real mpirun
# ranks, one check per function, a JUnit test case per check in $XML_OUTPUT_FILE.
#   source cli_harness.sh NAME   # then: check NAME FUNCTION ...; finish

export TMPDIR="${TEST_TMPDIR:-/tmp}" OMP_NUM_THREADS=1 MTO_COLLECTIVE_TIMEOUT=120
suite=$1
passed=0
failed=0
cases=""
suite_start=$(date +%s)

# ranks N COMMAND...: COMMAND on N mpirun ranks sharing this machine's cores.
ranks() { mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS -x TMPDIR \
            -x MTO_COLLECTIVE_TIMEOUT "${@:2}"; }

# check NAME COMMAND...: runs COMMAND (a shell function), records pass or fail.
check() {
  local name=$1
  shift
  local out status seconds start=$(date +%s)
  out=$("$@" 2>&1)
  status=$?
  seconds=$(($(date +%s) - start))
  if [ "$status" = 0 ]; then
    passed=$((passed + 1))
    cases+="<testcase name=\"$name\" time=\"$seconds\"/>"
    echo "PASS $name ($seconds s)"
  else
    failed=$((failed + 1))
    cases+="<testcase name=\"$name\" time=\"$seconds\"><failure message=\"failed\"/></testcase>"
    echo "FAIL $name ($seconds s)"
    echo "$out" | sed 's/^/    /'
  fi
}

# expect_error_line OUTPUT PATTERN: the command failed with one "mto: error:" line matching.
expect_error_line() {
  local out=$1 pattern=$2
  [ "$(grep -c '^mto: error: ' <<<"$out")" = 1 ] || { echo "expected one error line, got:"; echo "$out"; return 1; }
  grep -q "^mto: error: .*$pattern" <<<"$out" || { echo "error does not match '$pattern':"; echo "$out"; return 1; }
}

# finish: writes the JUnit file, prints the counts, and fails if a check failed.
finish() {
  if [ -n "${XML_OUTPUT_FILE:-}" ]; then
    printf '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites><testsuite name="%s" tests="%d" failures="%d">%s</testsuite></testsuites>\n' \
      "$suite" $((passed + failed)) "$failed" "$cases" >"$XML_OUTPUT_FILE"
  fi
  echo "$passed passed, $failed failed in $(($(date +%s) - suite_start)) s"
  [ "$failed" = 0 ]
}
