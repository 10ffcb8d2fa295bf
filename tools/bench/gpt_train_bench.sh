#!/usr/bin/env bash
# Training throughput of the GPT on the text corpus, in tokens per second, on one machine:
# 4 ranks as (dp=2, tp=2), 4 ranks as (dp=4, tp=1), and one process, each run --repeat
# times in turn (this VM varies by 30 % run to run), the median printed with its ratio to
# the single process. Every run trains the same model on the same sequences.
#   tools/bench/gpt_train_bench.sh [--repeat 3] [--samples 4000] [--model-args JSON]
set -euo pipefail
cd "$(dirname "$0")/../.."
repeat=3
samples=4000
args='{"width": 128, "depth": 2, "heads": 4, "context": 64}'
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) repeat="$2"; shift 2 ;;
    --samples) samples="$2"; shift 2 ;;
    --model-args) args="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpt_train_bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
source tools/bench/cli_bench_setup.sh train-bench

# tokens/s of one run: the rate on the final progress line ("... tokens in T s (R tokens/s)").
rate() {
  local np=$1 tp=$2
  mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$np" -x OMP_NUM_THREADS "$mto" train \
    --model gpt --model-args "$args" --tp "$tp" --train-samples "$samples" --epochs 1 --batch-size 16 \
    --out "$dir/ckpt" 2>&1 </dev/null | sed -nE 's/.* tokens in [0-9.]+ s \(([0-9]+) tokens\/s\).*/\1/p'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A runs
layouts=("4 2" "4 1" "1 1")
for ((i = 1; i <= repeat; i++)); do
  for layout in "${layouts[@]}"; do
    r=$(rate $layout)
    [ -n "$r" ] || { echo "gpt_train_bench.sh: the run on ranks/tp $layout printed no rate" >&2; exit 1; }
    runs[$layout]+="$r "
  done
done
one=$(tr ' ' '\n' <<<"${runs[1 1]}" | grep . | median)
echo "gpt $args, $samples sequences of the text corpus, batch 16 per replica; medians of $repeat run(s)"
printf "%-22s %14s %10s   %s\n" layout "tokens/s" "vs 1 proc" runs
for layout in "${layouts[@]}"; do
  read -r np tp <<<"$layout"
  m=$(tr ' ' '\n' <<<"${runs[$layout]}" | grep . | median)
  printf "%-22s %14.0f %9.2fx   %s\n" "$np rank(s) (dp=$((np / tp)), tp=$tp)" "$m" "$(awk -v a="$m" -v b="$one" 'BEGIN { print a / b }')" \
    "${runs[$layout]}"
done
