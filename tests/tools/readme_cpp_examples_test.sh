#!/usr/bin/env bash
# The C++ code a README section shows is the text of compiled examples, word for word: the
# section's ```cpp blocks, in order, one per example file, each equal to that file's parts
# between "// ANCHOR: readme" and "// ANCHOR_END: readme" lines (each part dedented, parts
# joined by one blank line).
#   readme_cpp_examples_test.sh README.md "## Using it from C++" EXAMPLE.cc...
# A block without an example, an example without a block, and every difference fail the test
# with a diff (- README, + example).
set -euo pipefail
readme=$1
section=$2
shift 2
work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/readme-cpp.XXXXXX")

# Writes the section's cpp blocks to $work/block.1, .2, ...; prints their count.
blocks=$(awk -v section="$section" -v out="$work/block" '
  code && $0 == "```" { code = 0; close(file); next }
  code { print > file; next }
  $0 == section { inside = 1; found = 1; match(section, /^#+/); level = RLENGTH; next }
  inside && /^#+ / { match($0, /^#+/); if (RLENGTH <= level) inside = 0 }
  inside && $0 == "```cpp" { n++; file = out "." n; code = 1; printf "" > file }
  END { if (!found) exit 3; if (code) exit 4; print n + 0 }
' "$readme") || {
  echo "$readme: no section '$section', or a code block in it is not closed"
  exit 1
}

# dedented_parts FILE: the file's readme parts as the README shows them.
dedented_parts() {
  awk '
    function flush(   i, indent, min) {
      min = -1
      for (i = 1; i <= lines; i++) {
        if (buffer[i] ~ /^[ \t]*$/) continue
        match(buffer[i], /^ */)
        if (min < 0 || RLENGTH < min) min = RLENGTH
      }
      if (parts++) print ""
      for (i = 1; i <= lines; i++) print (buffer[i] ~ /^[ \t]*$/ ? "" : substr(buffer[i], min + 1))
      lines = 0
    }
    /^[ \t]*\/\/ ANCHOR: readme$/ { if (inside) { bad = "nested ANCHOR at line " NR; exit 5 } inside = 1; next }
    /^[ \t]*\/\/ ANCHOR_END: readme$/ { if (!inside) { bad = "ANCHOR_END without ANCHOR at line " NR; exit 5 }
                                        inside = 0; flush(); next }
    inside { buffer[++lines] = $0 }
    END {
      if (bad != "") { print bad > "/dev/stderr"; exit 5 }
      if (inside) { print "ANCHOR without ANCHOR_END" > "/dev/stderr"; exit 5 }
      if (!parts) { print "no ANCHOR: readme part" > "/dev/stderr"; exit 5 }
    }
  ' "$1"
}

status=0
if [ "$blocks" != "$#" ]; then
  echo "$readme, section '$section': $blocks cpp block(s), but $# example file(s) to quote: every block must be" \
       "the text of a compiled example (tests/tools/BUILD.bazel lists them)"
  status=1
fi
index=0
for example in "$@"; do
  index=$((index + 1))
  if ! dedented_parts "$example" >"$work/example.$index" 2>"$work/error.$index"; then
    echo "$example: $(cat "$work/error.$index")"
    status=1
    continue
  fi
  [ -f "$work/block.$index" ] || continue
  if diff -u --label "$readme (section '$section', cpp block $index)" --label "$example (ANCHOR: readme parts)" \
      "$work/block.$index" "$work/example.$index"; then
    echo "cpp block $index of '$section' is the text of $example ($(wc -l <"$work/block.$index") lines)"
  else
    echo "cpp block $index of '$section' differs from $example: copy the example's ANCHOR parts into the README"
    status=1
  fi
done
exit "$status"
