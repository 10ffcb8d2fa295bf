#!/usr/bin/env bash
# A save that runs out of space (a file-size limit: `ulimit -f`, with SIGXFSZ ignored so that
# writes fail with EFBIG instead of killing the process) must fail on every rank with an error naming the file and the
# cause, leave the previous checkpoint intact (it restores bit for bit) and leave no
# temporary directory behind. One process, three ranks all limited, three ranks of which
# only rank 2 is limited. With MTO_TEST_SPLIT=1 the model is split over the ranks, and the
# writers of its column parts exchange rows while one of them can no longer write.
#
#   disk_full_test.sh WORKER
set -uo pipefail
worker=$(realpath "$1")
work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/disk-full-XXXXXX")
parent=$work/checkpoints
dir=$parent/ckpt
export TMPDIR=$work OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MTO_COLLECTIVE_TIMEOUT=60
limit_kb=4096  # a 4 MB file-size limit; every shard of the 24 MB model is larger
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none -x TMPDIR -x OMP_NUM_THREADS -x MTO_COLLECTIVE_TIMEOUT
     -x MTO_TEST_SPLIT=${MTO_TEST_SPLIT:-0})
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

"$worker" save "$dir" 1 >/dev/null || { echo "FAIL: the first save failed"; exit 1; }

# check_run NAME RANKS LIMITED_RANKS OUTPUT RC: every rank reported an error that names its
# shard and EFBIG ("File too large"), or relays the limited rank's; nothing is left behind
# and the previous checkpoint restores.
check_run() {
  local name=$1 ranks=$2 limited=$3 out=$4 rc=$5
  echo "== $name: exit $rc"
  grep -E "^rank [0-9] error" <<<"$out"
  [ "$rc" != 0 ] || fail "$name: the save succeeded under the limit"
  for ((r = 0; r < ranks; r++)); do
    line=$(grep "^rank $r error: " <<<"$out")
    if [[ " $limited " == *" $r "* ]]; then
      # A split tensor lies in any rank's shard.
      shard="model-0000$((r + 1))-of-0000$ranks.safetensors"
      [ "${MTO_TEST_SPLIT:-0}" = 1 ] && shard="model-0000[1-$ranks]-of-0000$ranks.safetensors"
      grep -qE "^rank $r error: cannot write at offset [0-9]+ of $parent/\.ckpt\.mto-staging-[^/]+/$shard: File too large$" <<<"$line" ||
        fail "$name: rank $r's error does not name its shard and EFBIG: ${line:-nothing}"
    else
      grep -qE ": File too large \(on rank [0-9]\)$" <<<"$line" ||
        fail "$name: rank $r does not relay the failing rank's error: ${line:-nothing}"
    fi
  done
  local left
  left=$(ls -A "$parent" | grep -v '^ckpt$')
  [ -z "$left" ] || fail "$name: the failed save left $left next to the checkpoint"
  restored=$("$worker" restore "$dir" 1 2>&1) || fail "$name: the previous checkpoint does not restore: $restored"
  echo "$name: nothing left behind; $restored"
}

out=$( (ulimit -f $limit_kb; trap '' XFSZ; exec "$worker" save "$dir" 2) 2>&1)
check_run "one process" 1 "0" "$out" $?

# mpirun's launcher resets signal dispositions before it starts a rank, so each limited rank
# sets the limit and ignores SIGXFSZ itself.
limited_ranks() {
  "${mpi[@]}" -np 3 bash -c 'if [[ " $1 " == *" $OMPI_COMM_WORLD_RANK "* ]]; then ulimit -f '$limit_kb'; trap "" XFSZ; fi
                             shift; exec "$@"' rank "$1" "$worker" save "$dir" "$2" 2>&1
}
out=$(limited_ranks "0 1 2" 3)
check_run "3 ranks, all limited" 3 "0 1 2" "$out" $?
out=$(limited_ranks "2" 4)
check_run "3 ranks, rank 2 limited" 3 "2" "$out" $?

# Without the limit, the next save succeeds and replaces the checkpoint.
"$worker" save "$dir" 5 >/dev/null && "$worker" restore "$dir" 5 >/dev/null || fail "the save after the failures failed"
rm -rf "$work"
if [ "$failures" -eq 0 ]; then echo "== disk full: PASS"; else echo "== disk full: $failures failed checks"; exit 1; fi
