#!/usr/bin/env bash
# A rank that dies in the middle of a collective save (SIGKILL while its shard is being
# written) or restore (_exit once it has read the first bytes of the checkpoint): the survivors must fail on their own within
# the collective timeout with a DistributedError naming the operation and their rank, the job
# must end instead of hanging, and the previous checkpoint must stay intact with nothing left
# next to it once a save has run again.
#
#   rank_death_test.sh WORKER
#
# mpirun runs with orte_abort_on_non_zero_status 0, so that it does not kill the survivors
# itself. (Open MPI 4.1.4's mpirun then never ends a job in which a rank was killed by a
# signal; a survivor whose world broke ends the job with MPI_Abort at exit, so the job
# must still end, non-zero.)
set -uo pipefail
worker=$(realpath "$1")
work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/rank-death-XXXXXX")
dir=$work/checkpoints/ckpt
export TMPDIR=$work OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MTO_COLLECTIVE_TIMEOUT=3
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

"$worker" save "$dir" 1 >/dev/null || { echo "FAIL: the first save failed"; exit 1; }
for run in "save 1" "save 0" "restore 1" "restore 2"; do
  read -r op victim <<<"$run"
  start=$(date +%s.%N)
  # Keep mpirun from killing the survivors when the victim dies: they must act on their own.
  out=$(timeout 20 mpirun --allow-run-as-root --oversubscribe --bind-to none -np 3 \
        --mca orte_abort_on_non_zero_status 0 -x TMPDIR -x OMP_NUM_THREADS -x MTO_COLLECTIVE_TIMEOUT \
        "$worker" die "$op" "$dir" 1 "$victim" 2>&1)
  rc=$?
  elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  echo "== rank $victim dies during a $op: job exit $rc after $elapsed s"
  grep -E "^rank [0-9] |^FAIL" <<<"$out"
  if [ "$rc" = 124 ]; then
    fail "$op/$victim: the job hung until the 20 s limit"
  elif [ "$rc" = 0 ]; then
    fail "$op/$victim: the job exited 0 although a rank died"
  fi
  for rank in 0 1 2; do
    [ "$rank" = "$victim" ] && continue
    line=$(grep "^rank $rank caught DistributedError" <<<"$out")
    if ! grep -qE "timed out after 3 s on rank $rank of 3" <<<"$line"; then
      fail "$op/$victim: rank $rank did not report a timed-out collective: ${line:-nothing}"
      continue
    fi
    grep -qE "caught DistributedError after [0-9.e-]+ s: (all_gather|broadcast|all_reduce|all_to_all|barrier) \(" <<<"$line" ||
      fail "$op/$victim: rank $rank's error does not start with the collective operation: $line"
    seconds=$(sed -E 's/.*after ([0-9.e-]+) s:.*/\1/' <<<"$line")
    awk -v s="$seconds" 'BEGIN { exit !(s >= 2.9 && s < 10) }' ||
      fail "$op/$victim: rank $rank failed after $seconds s, not within the 3 s timeout"
    echo "survivor rank $rank of a $op failed after $seconds s"
  done
  hidden=$(ls -A "$work/checkpoints" | grep -c '^\.')
  if [ "$op" = save ] && [ "$victim" != 0 ] && [ "$hidden" != 0 ]; then
    fail "$op/$victim: rank 0 survived but left $hidden hidden entries: $(ls -A "$work/checkpoints")"
  fi
  checked=$("$worker" check "$dir" 1 1 1 2>&1) || fail "$op/$victim: $checked"
  echo "after the failed $op: $checked"
done
rm -rf "$work"
if [ "$failures" -eq 0 ]; then echo "== rank death: PASS"; else echo "== rank death: $failures failed checks"; exit 1; fi
