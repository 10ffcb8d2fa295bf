#!/usr/bin/env bash
# The main job, in two parts. Fashion-MNIST: trains the CNN on 4 ranks, quantizes it three
# ways with calibration sharded over the ranks, makes it 2:4 sparse and prunes it to half its
# parameters (search sharded over the ranks), fine-tunes those two for one epoch, restores
# each checkpoint on 2 ranks, evaluates it there, and prints a table. Language model: trains
# a GPT on the fortunes corpus on 4 ranks as (dp=2, tp=2), then the same optimizations, each
# checkpoint restored and evaluated on another mesh, and prints a table and sampled text.
#
#   tools/demo.sh [--epochs N] [--gpt-epochs N] [--dir DIR] [--only fashion|gpt]
set -euo pipefail
cd "$(dirname "$0")/.."

epochs=2
gpt_epochs=1
only=""
dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs) epochs="$2"; shift 2 ;;
    --gpt-epochs) gpt_epochs="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

# The value of "key":number in a JSON line.
json_number() { sed -E "s/.*\"$1\":([-0-9.eE+]+).*/\1/" <<<"$2"; }

fashion_job() {
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
    printf '%s\t%s\t%s\t%s\t%s\n' "$format" "$(json_number accuracy "$result")" "$(du -sb "$dir/$format" | cut -f1)" \
      "$(save_seconds "$dir/$format.log")" "$(json_number restore_seconds "$result")" >>"$table"
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
}

gpt_job() {
  local gpt="$dir/gpt"
  local args='{"width": 128, "depth": 2, "heads": 4, "context": 64}'
  mkdir -p "$gpt"
  echo "== training gpt $args for $gpt_epochs epoch(s) of the fortunes corpus on 4 ranks as (dp=2, tp=2)"
  ranks 4 "$mto" train --model gpt --model-args "$args" --tp 2 --epochs "$gpt_epochs" --batch-size 16 --lr 6e-3 \
    --out "$gpt/float" | tee "$gpt/float.log"
  echo "float	(2,2)	(2,1)" >"$gpt/meshes.tsv"

  # The int4 formats take blocks of 128 input features: at tp = 2 each rank holds 64 of the
  # 128 inputs of attn.proj, so a block would straddle two ranks; they are calibrated on (4, 1).
  # int4_awq_full is int4_awq with Model Optimizer's awq_full algorithm (AWQ-lite, then a clip
  # search per block), which no preset names: its config is written out.
  printf '%s\n' '{"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 128}, "enable": true},
    "*input_quantizer": {"enable": false}, "*lm_head*": {"enable": false}, "default": {"enable": false}},
    "algorithm": {"method": "awq_full"}}' >"$gpt/int4_awq_full.json"
  for format in int8 int8_smoothquant fp8 int4_blockwise int4_awq int4_awq_full; do
    local tp=2
    [[ "$format" = int4_* ]] && tp=1
    local mode=(--mode "quantize:$format")
    [ "$format" = int4_awq_full ] && mode=(--mode quantize --config "$gpt/int4_awq_full.json")
    echo "== quantizing gpt with $format on 4 ranks, tp=$tp (calibration split over the replicas)"
    ranks 4 "$mto" optimize "$gpt/float" --tp "$tp" "${mode[@]}" --calib-samples 512 \
      --out "$gpt/$format" | tee "$gpt/$format.log"
    printf '%s\t(%d,%d)\t(2,1)\n' "$format" $((4 / tp)) "$tp" >>"$gpt/meshes.tsv"
    echo "== exporting gpt $format as a deployable checkpoint (real low-bit weights) on 4 ranks, tp=$tp"
    ranks 4 "$mto" export "$gpt/$format" --tp "$tp" --out "$gpt/$format.deployed"
  done
  # One search serves every budget: the first run keeps its scores in the search checkpoint,
  # the others take them all from it.
  rm -rf "$gpt/auto_search"
  for bits in 6 4.5 8; do
    echo "== auto_quantize: a format per layer (int4_blockwise, int8, fp8 or none) within $bits bits per weight"
    ranks 4 "$mto" optimize "$gpt/float" --mode "auto_quantize:effective_bits=$bits" --calib-samples 512 \
      --score-samples 256 --search-checkpoint "$gpt/auto_search" --out "$gpt/auto_${bits}bit" |
      tee "$gpt/auto_${bits}bit.log"
    printf 'auto_%sbit\t(4,1)\t(2,1)\n' "$bits" >>"$gpt/meshes.tsv"
    ranks 4 "$mto" export "$gpt/auto_${bits}bit" --out "$gpt/auto_${bits}bit.deployed"
  done

  echo "== 2:4 sparsity on (2,2), then fine-tuning on 8000 sequences"
  ranks 4 "$mto" optimize "$gpt/float" --tp 2 --mode sparse_magnitude --out "$gpt/sparse" | tee "$gpt/sparse.log"
  ranks 4 "$mto" train --init "$gpt/sparse" --tp 2 --teacher "$gpt/float" --kd-weight 1 --train-samples 8000 \
    --epochs 1 --batch-size 16 --lr 1e-3 --out "$gpt/sparse_2:4+kd" | tee "$gpt/sparse_2:4+kd.log"
  printf 'sparse_2:4+kd\t(2,2)\t(2,1)\n' >>"$gpt/meshes.tsv"

  # fastnas cuts whole layers, so the pruned model is searched and fine-tuned at tp = 1.
  echo "== pruning the MLP widths to 60% of the parameters (32 candidates split over 4 ranks), then fine-tuning"
  ranks 4 "$mto" optimize "$gpt/float" --mode fastnas:params=0.6 --mode export_nas --val-samples 300 \
    --out "$gpt/pruned" | tee "$gpt/pruned.log"
  ranks 4 "$mto" train --init "$gpt/pruned" --train-samples 8000 --epochs 1 --batch-size 16 --lr 1e-3 \
    --out "$gpt/pruned_60%" | tee "$gpt/pruned_60%.log"
  printf 'pruned_60%%\t(4,1)\t(2,1)\n' >>"$gpt/meshes.tsv"
  echo "== the same fine-tuning with the float GPT as the teacher (distillation)"
  ranks 4 "$mto" train --init "$gpt/pruned" --teacher "$gpt/float" --kd-weight 1 --train-samples 8000 --epochs 1 \
    --batch-size 16 --lr 1e-3 --out "$gpt/pruned_60%+kd" | tee "$gpt/pruned_60%+kd.log"
  printf 'pruned_60%%+kd\t(4,1)\t(2,1)\n' >>"$gpt/meshes.tsv"

  echo "== restoring and evaluating each checkpoint on 2 ranks as (dp=2, tp=1)"
  local table="$gpt/results.tsv" bigram=""
  : >"$table"
  while IFS=$'\t' read -r format saved_on restored_on; do
    result=$(ranks 2 "$mto" eval "$gpt/$format" --tp 1 --json </dev/null)
    echo "$result"
    bigram=$(json_number bigram_bits_per_byte "$result")
    # A deployed checkpoint must evaluate exactly as its fake-quantized source does.
    local deployed="-" deployed_bytes=0
    if [ -d "$gpt/$format.deployed" ]; then
      deployed=$(ranks 2 "$mto" eval "$gpt/$format.deployed" --tp 1 --json </dev/null)
      echo "$deployed"
      deployed_bytes=$(du -sb "$gpt/$format.deployed" | cut -f1)
      if [ "$(json_number perplexity "$deployed")" = "$(json_number perplexity "$result")" ]; then
        deployed=same
      else
        deployed="DIFFERS:$(json_number perplexity "$deployed")"
      fi
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$format" "$(json_number perplexity "$result")" \
      "$(json_number bits_per_byte "$result")" "$(du -sb "$gpt/$format" | cut -f1)" \
      "$(save_seconds "$gpt/$format.log")" "$(json_number restore_seconds "$result")" "$saved_on" "$restored_on" \
      "$deployed_bytes" "$deployed" >>"$table"
  done <"$gpt/meshes.tsv"
  echo "== the float GPT restored on 2 ranks as (dp=1, tp=2) as well"
  local split
  split=$(ranks 2 "$mto" eval "$gpt/float" --tp 2 --json)
  echo "$split"

  echo "== sampling 160 bytes after the same prompt from float and from int4_blockwise"
  local prompt="The secret of life is"
  local float_text int4_text
  float_text=$("$mto" generate "$gpt/float" --prompt "$prompt" --tokens 160 --seed 7 | tr '\n\t' '  ' | tr -s ' ')
  int4_text=$("$mto" generate "$gpt/int4_blockwise" --prompt "$prompt" --tokens 160 --seed 7 | tr '\n\t' '  ' |
    tr -s ' ')

  echo
  awk -F'\t' -v bigram="$bigram" '
    NR == 1 { base = $2; base_bytes = $4 }
    { printf "%-16s %10.4f %9s %9.4f %8.2fx %10.2f MiB %7.3f s %8.3f s  %-9s %s %s\n", $1, $2,
             NR == 1 ? "-" : sprintf("%+.2f%%", 100 * ($2 / base - 1)), $3, $3 / bigram, $4 / 1048576, $5, $6,
             $7 " -> " $8, $9 == 0 ? "        -" : sprintf("%6.3fx", $9 / base_bytes), $10 == "-" ? "" : "(" $10 ")" }
  ' "$table" | {
    printf "%-16s %10s %9s %9s %9s %14s %9s %10s  %-14s %s\n" format perplexity "vs float" bits/byte "/ bigram" \
      checkpoint save restore "mesh: saved -> restored" "deployed (size vs float, perplexity)"
    cat
  }
  printf "\nbyte bigram (add-one smoothing) on the same validation bytes: %.4f bits/byte\n" "$bigram"
  printf "float restored as (dp=1, tp=2): perplexity %.4f, %.4f bits/byte\n" \
    "$(json_number perplexity "$split")" "$(json_number bits_per_byte "$split")"
  echo
  echo "float:          $float_text"
  echo "int4_blockwise: $int4_text"
  echo
  echo "The GPT (0.47 M parameters, byte tokens) trained on the fortunes corpus; every row is evaluated on"
  echo "all of the held-out text (every 20th fortune). Checkpoints are in $gpt."
  echo "sparse_2:4+kd and pruned_60%+kd were fine-tuned with the float GPT as their teacher (the loss: the"
  echo "logits' KL divergence from the teacher's alone, --kd-weight 1); pruned_60% had the same fine-tuning"
  echo "without a teacher."
  echo "\"deployed\" is mto export's checkpoint: real int8 / FP8 / packed int4 weights with their scales"
  echo "(Model Optimizer's unified layout, hf_quant_config.json), evaluated on its own; \"same\" means the"
  echo "same perplexity to the last digit. The embeddings and lm_head (73 k of the 0.47 M parameters) are"
  echo "left in float32, as the presets leave them, which bounds how small this small model gets."
}

[ "$only" = gpt ] || fashion_job
[ "$only" = fashion ] || gpt_job
