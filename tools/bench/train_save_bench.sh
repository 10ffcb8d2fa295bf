#!/usr/bin/env bash
# Training throughput while save_async writes training checkpoints in the background, against
# the same training without them, measured in the same run: `mto train` of a GPT whose
# training checkpoint (weights and Adam state) is about 150 MB, with and without
# --save-every, alternating, on each number of ranks; medians of --repeat runs.
#   tools/bench/train_save_bench.sh [--repeat 3] [--ranks "1 2"] [--save-every 2] [--samples 256]
set -euo pipefail
cd "$(dirname "$0")/../.."
repeat=3 ranks_list="1 2" save_every=2 samples=256
while [ $# -gt 0 ]; do
  case $1 in
    --repeat) repeat=$2; shift 2 ;;
    --ranks) ranks_list=$2; shift 2 ;;
    --save-every) save_every=$2; shift 2 ;;
    --samples) samples=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
bazel build -c opt //tools/cli:mto >/dev/null 2>&1 || bazel build -c opt //tools/cli:mto
mto="$(bazel info -c opt bazel-bin 2>/dev/null)/tools/cli/mto"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args='{"width": 512, "depth": 4, "heads": 8, "context": 64}'
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

for ranks in $ranks_list; do
  plain=() saving=() blocked=() saves=""
  for ((i = 0; i < repeat; i++)); do
    for mode in plain saving; do
      rm -rf "$work/out"
      extra=()
      [ $mode = saving ] && extra=(--save-every "$save_every")
      out=$(OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$ranks" -x OMP_NUM_THREADS \
            "$mto" train --model gpt --model-args "$args" --train-samples "$samples" --batch-size 8 --epochs 1 \
            --out "$work/out" "${extra[@]}" 2>&1)
      rate=$(sed -nE 's/^epoch 1\/1 .* in [0-9.]+ s \(([0-9.]+) tokens\/s\).*/\1/p' <<<"$out")
      [ -n "$rate" ] || { echo "$out"; exit 1; }
      if [ $mode = plain ]; then
        plain+=("$rate")
      else
        saving+=("$rate")
        blocked+=("$(sed -nE 's/.*training blocked ([0-9.]+) s/\1/p' <<<"$out")")
        saves=$(sed -nE 's/^([0-9]+) training checkpoint.*/\1/p' <<<"$out")
      fi
    done
  done
  p=$(printf '%s\n' "${plain[@]}" | median)
  s=$(printf '%s\n' "${saving[@]}" | median)
  b=$(printf '%s\n' "${blocked[@]}" | median)
  size=$(du -sm "$work/out" | cut -f1)
  echo "== $ranks rank(s), $repeat run(s) each, $saves training checkpoints of ~$((size * 3)) MB (model $size MB + Adam) per run"
  echo "tokens/s without checkpoints: ${plain[*]} (median $p)"
  echo "tokens/s with --save-every $save_every: ${saving[*]} (median $s)"
  awk -v s="$s" -v p="$p" -v b="$b" 'BEGIN { printf "throughput while saving in the background: %.2fx; training blocked %.2f s in all (median)\n", s / p, b }'
done
