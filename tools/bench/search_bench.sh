#!/usr/bin/env bash
# The pruning search on 1, 2 and 4 ranks with the same number of candidates per rank: the
# ranks split the candidates, so with a core per rank the wall time should stay flat while
# the candidates grow with the ranks. Prints candidates per second and its ratio to 1 rank,
# and, as the baseline measured in the same run, the time of as many independent
# single-process searches of the per-rank share running at once (no communication): the
# best that sharing could do on this machine. With fewer cores than ranks, the throughput
# stops at the cores; the baseline shows it.
#   tools/bench/search_bench.sh --checkpoint DIR [--per-rank N] [--ranks "1 2 4"] [--val-samples N]
# DIR: a float checkpoint of a zoo model (e.g. tools/demo.sh's float/).
set -euo pipefail
cd "$(dirname "$0")/../.."
checkpoint=""
per_rank=8
ranks_list="1 2 4"
val_samples=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --checkpoint) checkpoint="$2"; shift 2 ;;
    --per-rank) per_rank="$2"; shift 2 ;;
    --ranks) ranks_list="$2"; shift 2 ;;
    --val-samples) val_samples="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "search_bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$checkpoint" ] || { echo "search_bench.sh: --checkpoint DIR is required" >&2; exit 2; }
bazel build //tools/cli:mto >/dev/null 2>&1 || bazel build //tools/cli:mto
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "cores: $(nproc); $per_rank candidates per rank; $val_samples validation images per candidate"
# The seconds of the "searched ..." line of an optimize run's output.
search_seconds() { sed -nE 's/^searched .* in ([0-9.]+) s .*/\1/p' <<<"$1"; }
printf '%-6s %11s %10s %13s %10s %22s\n' ranks candidates seconds "candidates/s" "vs 1 rank" "independent baseline"
base=""
for ranks in $ranks_list; do
  # Baseline: `ranks` separate processes, each searching per_rank candidates alone.
  for i in $(seq "$ranks"); do
    OMP_NUM_THREADS=1 bazel-bin/tools/cli/mto optimize "$checkpoint" --mode "fastnas:params=0.5" \
      --search-candidates "$per_rank" --val-samples "$val_samples" --out "$out/alone$i" >"$out/alone$i.log" 2>&1 &
  done
  wait
  independent=$(for i in $(seq "$ranks"); do search_seconds "$(cat "$out/alone$i.log")"; done | sort -g | tail -1)
  candidates=$((per_rank * ranks))
  log=$(OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$ranks" \
        -x OMP_NUM_THREADS bazel-bin/tools/cli/mto optimize "$checkpoint" --mode "fastnas:params=0.5" \
        --search-candidates "$candidates" --val-samples "$val_samples" --out "$out/r$ranks" 2>&1) ||
    { echo "$log" >&2; exit 1; }
  found=$(sed -nE 's/^searched ([0-9]+) candidates.*/\1/p' <<<"$log")
  seconds=$(search_seconds "$log")
  rate=$(awk -v n="$found" -v s="$seconds" 'BEGIN { printf "%.2f", n / s }')
  [ -n "$base" ] || base=$rate
  printf '%-6s %11s %10s %13s %9.2fx %10s s (%.2fx)\n' "$ranks" "$found" "$seconds" "$rate" \
    "$(awk -v r="$rate" -v b="$base" 'BEGIN { print r / b }')" "$independent" \
    "$(awk -v s="$seconds" -v i="$independent" 'BEGIN { print s / i }')"
done
