#!/usr/bin/env bash
# The main job: trains the Fashion-MNIST CNN on 4 ranks, quantizes it three ways with
# calibration sharded over the ranks, makes it 2:4 sparse and prunes it to half its
# parameters (search sharded over the ranks), fine-tunes those two for one epoch, restores
# each checkpoint on 2 ranks, evaluates it there, and prints one table.
#
#   tools/demo.sh [--epochs N] [--dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

epochs=2
dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs) epochs="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "tools/demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$dir" ] || dir=$(mktemp -d /tmp/mto-demo.XXXXXX)
mkdir -p "$dir"

echo "== building mto"
if ! log=$(bazel build //tools/cli:mto 2>&1); then echo "$log" >&2; exit 1; fi
mto=bazel-bin/tools/cli/mto

# One intra-op thread per rank: the ranks share this machine's cores.
export OMP_NUM_THREADS=1
ranks() { mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS "${@:2}"; }
# The seconds of the "saved DIR in T s" line of a command's output.
save_seconds() { sed -nE 's/^saved .* in ([0-9.]+) s$/\1/p' "$1"; }

echo "== training fashion_cnn for $epochs epoch(s) on 4 ranks"
ranks 4 "$mto" train --model fashion_cnn --epochs "$epochs" --out "$dir/float" | tee "$dir/float.log"

formats=(int8 fp8 int4_blockwise)
for format in "${formats[@]}"; do
  echo "== quantizing with $format on 4 ranks (calibration sharded)"
  ranks 4 "$mto" optimize "$dir/float" --mode "quantize:$format" --calib-samples 1024 --out "$dir/$format" |
    tee "$dir/$format.log"
done

echo "== 2:4 sparsity on 4 ranks, then one epoch of fine-tuning"
ranks 4 "$mto" optimize "$dir/float" --mode sparse_magnitude --out "$dir/sparse" | tee "$dir/sparse.log"
ranks 4 "$mto" train --init "$dir/sparse" --epochs 1 --out "$dir/sparse_2:4" | tee "$dir/sparse_2:4.log"

echo "== pruning to 50% of the parameters (32 candidates split over 4 ranks), then one epoch of fine-tuning"
ranks 4 "$mto" optimize "$dir/float" --mode fastnas:params=0.5 --mode export_nas --out "$dir/pruned" |
  tee "$dir/pruned.log"
ranks 4 "$mto" train --init "$dir/pruned" --epochs 1 --out "$dir/pruned_50%" | tee "$dir/pruned_50%.log"

echo "== restoring and evaluating each checkpoint on 2 ranks"
table="$dir/results.tsv"
: >"$table"
for format in float "${formats[@]}" "sparse_2:4" "pruned_50%"; do
  result=$(ranks 2 "$mto" eval "$dir/$format" --json)
  echo "$result"
  accuracy=$(sed -E 's/.*"accuracy":([-0-9.eE+]+).*/\1/' <<<"$result")
  restore=$(sed -E 's/.*"restore_seconds":([-0-9.eE+]+).*/\1/' <<<"$result")
  bytes=$(du -sb "$dir/$format" | cut -f1)
  printf '%s\t%s\t%s\t%s\t%s\n' "$format" "$accuracy" "$bytes" "$(save_seconds "$dir/$format.log")" "$restore" >>"$table"
done

echo
awk -F'\t' '
  NR == 1 { base = $2 }
  { printf "%-16s %8.2f%% %9s %10.2f MiB %9.3f s %10.3f s\n", $1, 100 * $2,
           NR == 1 ? "-" : sprintf("%+.2f", 100 * ($2 - base)), $3 / 1048576, $4, $5 }
' "$table" | { printf "%-16s %9s %9s %14s %11s %12s\n" format accuracy "vs float" "checkpoint" save restore; cat; }
echo
echo "Fake quantization keeps the weights in float32, so the checkpoints are the same size; the"
echo "quantizers and their amax travel in them. The sparse checkpoint adds its masks (bool); the"
echo "pruned one has physically smaller layers. sparse_2:4 and pruned_50% were fine-tuned for one"
echo "epoch more than float. Checkpoints are in $dir (mto inspect DIR shows one)."
