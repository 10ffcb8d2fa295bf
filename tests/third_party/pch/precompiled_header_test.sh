#!/usr/bin/env bash
# A .gch built by cc_precompiled_header records no input modification times, so that a fresh
# clone of the repo (new mtimes, same contents) into a workspace whose output base survives
# does not stop every compile that uses it ("has been modified since the precompiled header
# was built: mtime changed"). Bazel rebuilds the .gch when an input's content changes.
#   precompiled_header_test.sh FILE...   (the rule's outputs: the header and its .gch)
set -euo pipefail
fail() { echo "FAIL: $*" >&2; exit 1; }
header=""
gch=""
for f in "$@"; do
  case $f in
    *.h.gch) gch=$f ;;
    *.h) header=$f ;;
  esac
done
[ -n "$header" ] && [ -n "$gch" ] || fail "expected a header and its .gch, got: $*"

dump=$(llvm-bcanalyzer-14 -dump "$gch") || fail "llvm-bcanalyzer-14 cannot read $gch"
# Clang 14's INPUT_FILE record: op0 id, op1 size, op2 modification time, then flags; the
# blob is the file's path.
records=$(grep '<INPUT_FILE ' <<<"$dump" || true)
count=$(grep -c . <<<"$records" || true)
[ "$count" -ge 2 ] || fail "$gch lists $count input files; expected the header and <vector>'s"

own=$(grep "blob data = '[^']*/$(basename "$header")'" <<<"$records" || true)
[ -n "$own" ] || fail "$gch does not list $(basename "$header") among its inputs"
size=$(stat -L -c %s "$header")
grep -q " op1=$size " <<<"$own" || fail "the record of $(basename "$header") does not hold its size $size: $own"

stamped=$(grep -v ' op2=0 ' <<<"$records" || true)
[ -z "$stamped" ] || fail "$gch records modification times: $(head -3 <<<"$stamped")"
echo "PASS: $count input files, sizes recorded, no modification times"
