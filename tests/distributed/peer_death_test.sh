#!/usr/bin/env bash
# A rank that exits (or stops answering) in the middle of a collective makes the other ranks
# fail with a DistributedError naming the operation and their rank, within the timeout.
set -uo pipefail
binary=$(realpath "$1")
export TMPDIR="${TEST_TMPDIR:-/tmp}"
export MTO_COLLECTIVE_TIMEOUT=3
failures=0
# hang_in_group: the world itself stays sound, yet the job must end (MPI_Finalize would wait
# for the stopped rank forever).
for mode in exit hang hang_in_group; do
  start=$(date +%s)
  # Keep mpirun from killing the survivors as soon as rank 1 exits with an error: the test
  # is about what the survivors do themselves.
  out=$(timeout 100 mpirun --allow-run-as-root --oversubscribe --bind-to none -np 3 \
        --mca orte_abort_on_non_zero_status 0 -x MTO_COLLECTIVE_TIMEOUT -x TMPDIR \
        "$binary" "$mode" 2>&1)
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  echo "== mode $mode (${elapsed} s, job exit $rc)"
  echo "$out"
  # The survivors end the job (MPI_Abort at exit once their world broke): non-zero, no hang.
  if [ "$rc" = 0 ] || [ "$rc" = 124 ]; then
    echo "FAIL ($mode): the job exited $rc; a job whose rank died must end non-zero"
    failures=$((failures + 1))
  fi
  for rank in 0 2; do
    # In the reversed group, rank r is world rank 2 - r, and says so.
    where="rank $rank of 3"
    [ "$mode" = hang_in_group ] && where="rank $rank of 3 (world rank $((2 - rank)) of 3)"
    line=$(grep "^rank $rank caught DistributedError" <<<"$out")
    if ! grep -qF "all_reduce (sum of 4 elements) timed out after 3 s on $where:" <<<"$line"; then
      echo "FAIL ($mode): rank $rank did not report the timed-out all_reduce"
      failures=$((failures + 1))
      continue
    fi
    seconds=$(sed -E 's/.*after ([0-9.]+) s:.*/\1/' <<<"$line")
    if ! awk -v s="$seconds" 'BEGIN { exit !(s >= 2.9 && s < 10) }'; then
      echo "FAIL ($mode): rank $rank failed after $seconds s, not within the 3 s timeout"
      failures=$((failures + 1))
    fi
    if ! grep -qF "rank $rank then: cannot run barrier on $where: the communicator broke earlier" <<<"$out"; then
      echo "FAIL ($mode): rank $rank's broken communicator accepted another collective"
      failures=$((failures + 1))
    fi
  done
  if [ "$elapsed" -ge 60 ]; then
    echo "FAIL ($mode): the job took ${elapsed} s: something hung"
    failures=$((failures + 1))
  fi
done
[ "$failures" -eq 0 ] && echo "PASS"
