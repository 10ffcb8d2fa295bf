#!/usr/bin/env bash
# End-to-end tests of the `mto` command line's language-model path on real mpirun ranks and
# the real text corpus (Debian package fortunes): train a tiny GPT on a (dp=2, tp=2) mesh,
# evaluate it on (1, 1) and (1, 2) with the same numbers, quantize it on 2 ranks and
# evaluate on 3, export it as real int8 weights, search a format per layer within a bit
# budget, fine-tune pruned and sparse students with it as the teacher, sample from it on one
# process and on a tp group with the same text, and the errors a user meets, each one clear
# line. The checks come in three groups, one Bazel test each, so that none nears the time
# limit on two loaded cores:
#   language_model_cli_test.sh MTO_BINARY mesh|pruning|auto_quantize
# Writes one JUnit test case per check to $XML_OUTPUT_FILE.
set -uo pipefail
mto=$(realpath "$1")
group=$2
work="${TEST_TMPDIR:-$(mktemp -d)}/language_model_cli"
mkdir -p "$work"
source "$(dirname "$0")/cli_harness.sh" "language_model_cli_${group}_test"

# A GPT small enough to train in a second on two shared cores.
gpt_args='{"width": 32, "depth": 1, "heads": 2, "context": 16}'
# Validation sequences of 16 bytes that every eval reads.
eval_samples=64

# field JSON NAME: the number NAME of a one-line `mto eval --json`; fails if it is missing.
field() {
  local value
  value=$(sed -nE "s/.*\"$2\":([-0-9.eE+]+)[,}].*/\1/p" <<<"$1")
  [ -n "$value" ] || { echo "no number \"$2\" in: $1" >&2; return 1; }
  echo "$value"
}
# finite NUMBER: a decimal number (no nan, inf, or null).
finite() { [[ $1 =~ ^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$ ]] || { echo "'$1' is not a finite number"; return 1; }; }
# close A B TOLERANCE: A and B are finite and |A - B| <= TOLERANCE * |B|.
close() {
  finite "$1" && finite "$2" || return 1
  awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b; exit !(d <= t * m) }' ||
    { echo "$1 and $2 differ by more than $3 (relative)"; return 1; }
}

# train_gpt: trains the GPT the other checks read into $work/gpt on a (dp=2, tp=2) mesh.
train_gpt() {
  ranks 4 "$mto" train --model gpt --tp 2 --model-args "$gpt_args" --train-samples 256 --batch-size 8 \
    --lr 1e-2 --out "$work/gpt" 2>&1
}

train_on_2x2_mesh() {
  out=$(train_gpt) || { echo "$out"; return 1; }
  grep -q "training gpt on 256 sequences of 16 bytes of the text corpus, 4 rank(s) as (dp=2, tp=2)," <<<"$out" ||
    { echo "$out"; return 1; }
  grep -q "^saved $work/gpt in" <<<"$out" || { echo "$out"; return 1; }
  # Progress and results come from rank 0 only.
  [ "$(grep -c '^saved ' <<<"$out")" = 1 ] || { echo "$out"; return 1; }
  [ -f "$work/gpt/MANIFEST" ] || { echo "no MANIFEST in $work/gpt"; return 1; }
  out=$("$mto" inspect "$work/gpt") || { echo "$out"; return 1; }
  for pattern in "model-like   gpt .*\"heads\":2" "mesh         (dp=2, tp=2)" "written by   mto .* on 4 rank(s)" \
                 "lm_head.weight  *F32  *\[256, 32\]  *dim 0 / 2 " "pos_emb.weight  *F32  *\[16, 32\]  *whole "; do
    grep -q "$pattern" <<<"$out" || { echo "missing '$pattern' in:"; echo "$out"; return 1; }
  done
  json=$("$mto" inspect "$work/gpt" --json --verify) || { echo "$json"; return 1; }
  grep -q '"mesh": "(dp=2, tp=2)"' <<<"$json" && grep -q '"verified": true' <<<"$json" &&
    grep -q '"factory": "gpt"' <<<"$json" || { echo "$json"; return 1; }
}

eval_same_on_any_mesh() {
  one=$("$mto" eval "$work/gpt" --samples $eval_samples --json 2>&1) || { echo "$one"; return 1; }
  two=$(ranks 2 "$mto" eval "$work/gpt" --tp 2 --samples $eval_samples --json 2>/dev/null) || { echo "$two"; return 1; }
  echo "(1, 1): $one"
  echo "(1, 2): $two"
  grep -q '"ranks":1,"tp":1' <<<"$one" && grep -q '"ranks":2,"tp":2' <<<"$two" || return 1
  # Every byte of the 64 sequences of 16 is predicted, on either mesh.
  [ "$(field "$one" tokens)" = $((eval_samples * 16)) ] || { echo "not $((eval_samples * 16)) tokens"; return 1; }
  [ "$(field "$two" tokens)" = $((eval_samples * 16)) ] || { echo "not $((eval_samples * 16)) tokens"; return 1; }
  loss=$(field "$one" loss) || return 1
  close "$(field "$two" loss)" "$loss" 1e-5 || return 1
  close "$(field "$two" bits_per_byte)" "$(field "$one" bits_per_byte)" 1e-5 || return 1
  # The derived numbers follow from the loss (nats per byte).
  close "$(field "$one" bits_per_byte)" "$(awk -v l="$loss" 'BEGIN { printf "%.17g", l / log(2) }')" 1e-6 || return 1
  close "$(field "$one" perplexity)" "$(awk -v l="$loss" 'BEGIN { printf "%.17g", exp(l) }')" 1e-6 || return 1
  # A trained GPT beats the uniform guess of 8 bits per byte; the byte bigram of English
  # text lies between 2 and 8.
  bits=$(field "$one" bits_per_byte) && finite "$bits" || return 1
  awk -v b="$bits" 'BEGIN { exit !(b > 0 && b < 8) }' ||
    { echo "bits_per_byte is not in (0, 8)"; return 1; }
  bigram=$(field "$one" bigram_bits_per_byte) && finite "$bigram" || return 1
  awk -v b="$bigram" 'BEGIN { exit !(b > 2 && b < 8) }' ||
    { echo "bigram_bits_per_byte is not in (2, 8)"; return 1; }
}

quantize_int8_eval_on_3() {
  out=$(ranks 2 "$mto" optimize "$work/gpt" --mode quantize:int8 --calib-samples 32 --out "$work/int8" 2>&1) ||
    { echo "$out"; return 1; }
  grep -q "applied quantize + max_calibrate on 2 rank(s) (dp=2, tp=1) .* over 32 sequences of 16 bytes" <<<"$out" ||
    { echo "$out"; return 1; }
  float=$("$mto" eval "$work/gpt" --samples $eval_samples --json 2>&1) || { echo "$float"; return 1; }
  int8=$(ranks 3 "$mto" eval "$work/int8" --samples $eval_samples --json 2>/dev/null) || { echo "$int8"; return 1; }
  echo "float: $float"
  echo "int8 on 3 ranks: $int8"
  grep -q '"ranks":3' <<<"$int8" || return 1
  [ "$(field "$float" tokens)" = "$(field "$int8" tokens)" ] || { echo "tokens differ"; return 1; }
  close "$(field "$int8" loss)" "$(field "$float" loss)" 0.05 || return 1
  # The presets leave the head in floating point: of the 5 linears' 15 quantizers, the
  # weights and inputs of the 4 in the block are on, none of lm_head's.
  out=$("$mto" inspect "$work/int8") || { echo "$out"; return 1; }
  grep -q "8 of 15 quantizers enabled, 8 calibrated: 4 x int8 per-channel, 4 x int8 per-tensor" <<<"$out" ||
    { echo "$out"; return 1; }
  json=$("$mto" inspect "$work/int8" --json) || { echo "$json"; return 1; }
  # Each quantizer's "enable" in every mode's metadata, as "NAME true|false" lines.
  states=$(awk '/"[^"]*_quantizer": \{/ { match($0, /"[^"]*_quantizer"/); name = substr($0, RSTART + 1, RLENGTH - 2) }
                /"enable": (true|false)/ && name != "" { print name, ($0 ~ /true/ ? "true" : "false"); name = "" }' <<<"$json")
  for quantizer in weight_quantizer input_quantizer output_quantizer; do
    [ "$(grep -c "^lm_head.$quantizer false$" <<<"$states")" = 2 ] ||
      { echo "lm_head.$quantizer is not disabled in both modes:"; echo "$states"; return 1; }
  done
  grep -q "^lm_head.* true$" <<<"$states" && { echo "lm_head is quantized:"; echo "$states"; return 1; }
  [ "$(grep -c "^blocks.0.fc1.weight_quantizer true$" <<<"$states")" = 2 ] ||
    { echo "blocks.0.fc1.weight_quantizer is not enabled:"; echo "$states"; return 1; }
}

generate_is_deterministic() {
  local prompt="The "
  "$mto" generate "$work/gpt" --prompt "$prompt" --tokens 40 --seed 3 >"$work/seed3.a" || return 1
  "$mto" generate "$work/gpt" --prompt "$prompt" --tokens 40 --seed 3 >"$work/seed3.b" || return 1
  "$mto" generate "$work/gpt" --prompt "$prompt" --tokens 40 --seed 4 >"$work/seed4" || return 1
  ranks 2 "$mto" generate "$work/gpt" --prompt "$prompt" --tokens 40 --seed 3 --tp 2 >"$work/seed3.tp2" 2>/dev/null ||
    return 1
  od -c "$work/seed3.a"
  # The prompt, 40 sampled bytes and a newline.
  [ "$(stat -c %s "$work/seed3.a")" = $((${#prompt} + 41)) ] || { echo "not prompt + 40 bytes + newline"; return 1; }
  [ "$(head -c ${#prompt} "$work/seed3.a")" = "$prompt" ] || { echo "does not start with the prompt"; return 1; }
  cmp "$work/seed3.a" "$work/seed3.b" || { echo "the same seed gave different text"; return 1; }
  cmp -s "$work/seed3.a" "$work/seed4" && { echo "seeds 3 and 4 gave the same text"; return 1; }
  # Every rank of the tp group samples the same bytes; rank 0 alone prints them.
  cmp "$work/seed3.a" "$work/seed3.tp2" || { od -c "$work/seed3.tp2"; return 1; }
}

missing_corpus_names_the_package() {
  out=$(MTO_TEXT_CORPUS_DIR=/nonexistent "$mto" train --model gpt --model-args "$gpt_args" --train-samples 16 \
        --out "$work/x" 2>&1) && { echo "trained without a corpus"; return 1; }
  expect_error_line "$out" "/nonexistent.*sudo apt-get install fortunes" || return 1
  out=$(MTO_TEXT_CORPUS_DIR=/nonexistent ranks 2 -x MTO_TEXT_CORPUS_DIR "$mto" train --model gpt \
        --model-args "$gpt_args" --train-samples 16 --out "$work/x" 2>&1) && { echo "trained without a corpus"; return 1; }
  expect_error_line "$out" "/nonexistent.*sudo apt-get install fortunes" || return 1
  [ ! -e "$work/x" ] || { echo "$work/x was written"; return 1; }
  # Missing on one node only: every rank fails at once, naming that rank (not a timed-out
  # collective on rank 0 minutes later, with the cause unsaid).
  printf '#!/bin/sh\n[ "$OMPI_COMM_WORLD_RANK" = 1 ] && export MTO_TEXT_CORPUS_DIR=/nonexistent\nexec "$@"\n' \
    >"$work/rank1_without_corpus" && chmod +x "$work/rank1_without_corpus"
  local one=(ranks 2 "$work/rank1_without_corpus" "$mto")
  out=$("${one[@]}" train --model gpt --model-args "$gpt_args" --train-samples 16 --out "$work/x" 2>&1) &&
    { echo "trained without a corpus on rank 1"; return 1; }
  expect_error_line "$out" "/nonexistent.*sudo apt-get install fortunes (on rank 1)" || return 1
  out=$("${one[@]}" eval "$work/gpt" --samples 8 2>&1) && { echo "evaluated without a corpus on rank 1"; return 1; }
  expect_error_line "$out" "/nonexistent.*sudo apt-get install fortunes (on rank 1)" || return 1
  out=$("${one[@]}" optimize "$work/gpt" --mode quantize:int8 --calib-samples 8 --out "$work/x" 2>&1) &&
    { echo "calibrated without a corpus on rank 1"; return 1; }
  expect_error_line "$out" "/nonexistent.*sudo apt-get install fortunes (on rank 1)" || return 1
}

tensor_parallel_size_errors() {
  out=$(ranks 4 "$mto" train --model gpt --tp 3 --model-args "$gpt_args" --train-samples 16 --out "$work/x" 2>&1) &&
    { echo "--tp 3 on 4 ranks trained"; return 1; }
  expect_error_line "$out" "--tp 3: the tensor-parallel size 3 does not divide the world size 4" || return 1
  out=$(ranks 4 "$mto" train --model gpt --tp 4 --model-args "$gpt_args" --train-samples 16 --out "$work/x" 2>&1) &&
    { echo "--tp 4 with 2 heads trained"; return 1; }
  expect_error_line "$out" "the tensor-parallel size 4 does not divide the 2 heads of model 'gpt'" || return 1
  # The same on restore: eval of the (dp=2, tp=2) checkpoint on a mesh that cannot split it.
  out=$(ranks 4 "$mto" eval "$work/gpt" --tp 4 --samples 8 2>&1) && { echo "eval at --tp 4 with 2 heads ran"; return 1; }
  expect_error_line "$out" "the tensor-parallel size 4 does not divide the 2 heads of model 'gpt'"
}

generate_needs_a_language_model() {
  out=$("$mto" train --model fashion_cnn --model-args '{"channels": [4, 8], "hidden": 16}' --epochs 1 \
        --train-samples 64 --out "$work/cnn" 2>&1) || { echo "$out"; return 1; }
  out=$("$mto" generate "$work/cnn" --prompt "The " --tokens 4 2>&1) && { echo "generated from a classifier"; return 1; }
  expect_error_line "$out" "$work/cnn holds no language model" || return 1
  out=$("$mto" generate "$work/gpt" --prompt "" --tokens 4 2>&1) && { echo "generated from an empty prompt"; return 1; }
  expect_error_line "$out" "--prompt must not be empty"
}

# Pruning cuts whole layers (tp = 1) and its checkpoint records the pruned shapes; 2:4
# sparsity works split, and both fine-tune and evaluate on another mesh.
prune_and_sparsify() {
  out=$(ranks 2 "$mto" optimize "$work/gpt" --mode fastnas:params=0.8 --mode export_nas --val-samples 16 \
        --calib-samples 16 --search-candidates 4 --out "$work/pruned" 2>&1) || { echo "$out"; return 1; }
  grep -q "^best subnet: blocks.0.fc1=[0-9]*; .* validation loss [0-9.]* (full model: validation loss" <<<"$out" ||
    { echo "$out"; return 1; }
  out=$("$mto" inspect "$work/pruned") || { echo "$out"; return 1; }
  grep -q "blocks.0.fc1.weight  *F32  *\[[0-9]*, 32\]  *whole " <<<"$out" || { echo "$out"; return 1; }
  grep -q "blocks.0.fc1.weight  *F32  *\[128, 32\]" <<<"$out" && { echo "not pruned: $out"; return 1; }
  out=$(ranks 2 "$mto" train --init "$work/pruned" --train-samples 64 --batch-size 8 --out "$work/pruned-ft" 2>&1) ||
    { echo "$out"; return 1; }
  one=$("$mto" eval "$work/pruned-ft" --samples 16 --json) || { echo "$one"; return 1; }
  finite "$(field "$one" loss)" || return 1
  out=$(ranks 2 "$mto" eval "$work/pruned-ft" --tp 2 --samples 16 2>&1) && { echo "restored split: $out"; return 1; }
  expect_error_line "$out" "fastnas: layer blocks.0.attn.qkv is split over 2 tensor-parallel ranks; fastnas searches whole layers only (a checkpoint pruned by it restores at tp = 1 only, e.g. mto eval --tp 1)" || return 1

  out=$(ranks 2 "$mto" optimize "$work/gpt" --tp 2 --mode sparse_magnitude --out "$work/sparse" 2>&1) ||
    { echo "$out"; return 1; }
  out=$(ranks 2 "$mto" train --init "$work/sparse" --tp 2 --train-samples 64 --batch-size 8 --out "$work/sparse-ft" 2>&1) ||
    { echo "$out"; return 1; }
  one=$("$mto" eval "$work/sparse-ft" --samples 16 --json) || { echo "$one"; return 1; }
  two=$(ranks 2 "$mto" eval "$work/sparse-ft" --tp 2 --samples 16 --json) || { echo "$two"; return 1; }
  close "$(field "$one" loss)" "$(field "$two" loss)" 1e-5 || return 1
  # The masks survive fine-tuning: half of every 4 weights of fc1 stay zero.
  grep -q "blocks.0.fc1._weight_mask  *BOOL" <<<"$("$mto" inspect "$work/sparse-ft")" || { echo "no mask"; return 1; }
}

# auto_quantize picks a format per layer within the bits, prints the table and records a
# quantize config that restores with no data; the extremes take the fewest bits everywhere.
auto_quantize_within_bits() {
  local wide='{"width": 128, "depth": 1, "heads": 2, "context": 16}'
  out=$(ranks 2 "$mto" train --model gpt --model-args "$wide" --train-samples 64 --batch-size 8 \
        --out "$work/wide" 2>&1) || { echo "$out"; return 1; }
  out=$(ranks 2 "$mto" optimize "$work/wide" --mode auto_quantize:effective_bits=6 --calib-samples 32 \
        --score-samples 32 --batch-size 8 --out "$work/auto6" 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  grep -q "^auto_quantize: effective bits [0-9.]* within 6 over 4 linear layers, scored on 32 sequences (4 batches, 0 from the search checkpoint) over 2 replica(s) in [0-9.]* s, peak extra memory [0-9.]* MiB per rank (gradient score" <<<"$out" ||
    return 1
  bits=$(sed -nE 's/^auto_quantize: effective bits ([0-9.]+) .*/\1/p' <<<"$out")
  awk -v b="$bits" 'BEGIN { exit !(b <= 6 && b >= 4) }' || { echo "effective bits $bits not in [4, 6]"; return 1; }
  grep -q "^left in floating point (convolutions, and layers a candidate format does not quantize): lm_head$" <<<"$out" || return 1
  [ "$(grep -cE "^blocks\.0\.(attn\.qkv|attn\.proj|fc1|fc2) +(int4_blockwise|int8|fp8|none) " <<<"$out")" = 4 ] ||
    { echo "not one choice per layer"; return 1; }
  out=$("$mto" inspect "$work/auto6") || { echo "$out"; return 1; }
  grep -q "quantize" <<<"$out" && grep -q "max_calibrate" <<<"$out" || { echo "$out"; return 1; }
  one=$("$mto" eval "$work/auto6" --samples 16 --json) || { echo "$one"; return 1; }
  finite "$(field "$one" loss)" || return 1
  out=$(ranks 2 "$mto" optimize "$work/wide" --mode auto_quantize:effective_bits=4 --formats int8,int4_blockwise \
        --calib-samples 32 --score-samples 32 --out "$work/auto4" 2>&1) || { echo "$out"; return 1; }
  [ "$(grep -cE "^blocks\.0\.[a-z0-9.]+ +int4_blockwise " <<<"$out")" = 4 ] || { echo "$out"; return 1; }
  out=$("$mto" optimize "$work/wide" --mode auto_quantize:effective_bits=3 --calib-samples 8 --out "$work/x" 2>&1) &&
    { echo "3 bits accepted"; return 1; }
  expect_error_line "$out" "effective_bits 3 is outside \[4, 16\]" || return 1
  # Formats that smooth are candidates too; the deployed checkpoint evaluates as its source.
  out=$(ranks 2 "$mto" optimize "$work/wide" --mode auto_quantize:effective_bits=6 --formats int4_awq,int8_smoothquant \
        --calib-samples 32 --score-samples 32 --batch-size 8 --out "$work/smooth6" 2>&1) || { echo "$out"; return 1; }
  grep -qE "^layer +choice +int4_awq \(4 bit\) +int8_smoothquant \(8 bit\) +none \(16 bit\)$" <<<"$out" ||
    { echo "$out"; return 1; }
  out=$("$mto" export "$work/smooth6" --out "$work/smooth6.deployed" 2>&1) || { echo "$out"; return 1; }
  one=$("$mto" eval "$work/smooth6" --samples 16 --json) || { echo "$one"; return 1; }
  deployed=$("$mto" eval "$work/smooth6.deployed" --samples 16 --json) || { echo "$deployed"; return 1; }
  [ "$(field "$one" loss)" = "$(field "$deployed" loss)" ] || { echo "$one / $deployed"; return 1; }
  # kl_div with a search checkpoint on 2 ranks; the same search on 1 rank takes every batch
  # from the checkpoint and prints the same table, scores included.
  out=$(ranks 2 "$mto" optimize "$work/wide" --mode auto_quantize:effective_bits=6 --score-method kl_div \
        --calib-samples 32 --score-samples 32 --batch-size 8 --search-checkpoint "$work/aq-search" --out "$work/kl2" 2>&1) ||
    { echo "$out"; return 1; }
  grep -q "(4 batches, 0 from the search checkpoint) over 2 replica(s).*(kl_div score" <<<"$out" || { echo "$out"; return 1; }
  table2=$(grep -E "^(layer|blocks\.)" <<<"$out")
  out=$("$mto" optimize "$work/wide" --mode auto_quantize:effective_bits=6 --score-method kl_div \
        --calib-samples 32 --score-samples 32 --batch-size 8 --search-checkpoint "$work/aq-search" --out "$work/kl1" 2>&1) ||
    { echo "$out"; return 1; }
  grep -q "(4 batches, 4 from the search checkpoint) over 1 replica(s)" <<<"$out" || { echo "$out"; return 1; }
  [ "$(grep -E "^(layer|blocks\.)" <<<"$out")" = "$table2" ] || { echo "tables differ: $table2 / $out"; return 1; }
  [ "$(head -c 45 "$work/aq-search/auto_quantize.search")" = "mto-checksummed-file 1 auto_quantize search c" ] ||
    { echo "not a checksummed search checkpoint"; return 1; }
  # Split over tp = 2 (int8 and fp8: int4's blocks of 128 inputs would straddle the ranks of
  # attn.proj); int4 at tp = 2 is refused, naming the layer.
  out=$(ranks 2 "$mto" optimize "$work/wide" --tp 2 --mode auto_quantize:effective_bits=12 --formats int8,fp8 \
        --calib-samples 32 --score-samples 32 --batch-size 8 --out "$work/auto-tp2" 2>&1) || { echo "$out"; return 1; }
  grep -q "^applied auto_quantize on 2 rank(s) (dp=1, tp=2)" <<<"$out" || { echo "$out"; return 1; }
  [ "$(grep -cE "^blocks\.0\.[a-z0-9.]+ +(int8|fp8|none) " <<<"$out")" = 4 ] || { echo "$out"; return 1; }
  one=$("$mto" eval "$work/auto-tp2" --samples 16 --json) || { echo "$one"; return 1; }
  finite "$(field "$one" loss)" || return 1
  out=$(ranks 2 "$mto" optimize "$work/wide" --tp 2 --mode auto_quantize:effective_bits=6 --calib-samples 8 \
        --score-samples 8 --out "$work/x" 2>&1) && { echo "int4 at tp 2 accepted"; return 1; }
  expect_error_line "$out" "layer 'blocks.0.attn.proj' has 64 on this rank (split over 2 tensor-parallel ranks)" ||
    return 1
  # The checkpoint belongs to kl_div: a gradient search refuses it, naming it.
  out=$("$mto" optimize "$work/wide" --mode auto_quantize:effective_bits=6 --calib-samples 32 --score-samples 32 \
        --search-checkpoint "$work/aq-search" --out "$work/x" 2>&1) && { echo "gradient took kl_div's checkpoint"; return 1; }
  expect_error_line "$out" "search checkpoint $work/aq-search/auto_quantize.search was written for method \"kl_div\", not \"gradient\"" ||
    return 1
  # A search checkpoint directory that cannot be made fails every rank with one line, no hang.
  out=$(ranks 2 "$mto" optimize "$work/wide" --mode auto_quantize:effective_bits=6 --calib-samples 8 --score-samples 8 \
        --search-checkpoint /proc/mto-no-such-dir --out "$work/x" 2>&1) && { echo "an impossible directory was taken"; return 1; }
  expect_error_line "$out" "--search-checkpoint /proc/mto-no-such-dir: cannot create it: No such file or directory"
}

# Fine-tuning with the float GPT as the teacher: on the pruned student (1 replica pair) and on
# the 2:4-sparse one split at tp 2, whose teacher splits the same way; the checkpoints hold
# the students alone.
distill_from_the_float_gpt() {
  out=$(ranks 2 "$mto" train --init "$work/pruned" --teacher "$work/gpt" --kd-temperature 2 --kd-weight 0.75 \
        --train-samples 64 --batch-size 8 --out "$work/distilled" 2>&1) || { echo "$out"; return 1; }
  grep -q "^distilling from $work/gpt (temperature 2, loss 0.75 x kd + 0.25 x the student's own)$" <<<"$out" ||
    { echo "$out"; return 1; }
  out=$("$mto" inspect "$work/distilled") || { echo "$out"; return 1; }
  grep -q "kd_loss\|export_student" <<<"$out" && { echo "the distillation was saved: $out"; return 1; }
  grep -q "export_nas" <<<"$out" || { echo "the student lost its modes: $out"; return 1; }
  grep -q "blocks.0.fc1.weight  *F32  *\[128, 32\]" <<<"$out" && { echo "not the pruned student: $out"; return 1; }
  one=$("$mto" eval "$work/distilled" --samples 16 --json) || { echo "$one"; return 1; }
  finite "$(field "$one" loss)" || return 1
  out=$(ranks 2 "$mto" train --init "$work/sparse" --tp 2 --teacher "$work/gpt" --train-samples 32 --batch-size 8 \
        --out "$work/sparse-distilled" 2>&1) || { echo "$out"; return 1; }
  out=$("$mto" inspect "$work/sparse-distilled") || { echo "$out"; return 1; }
  grep -q "blocks.0.fc1._weight_mask  *BOOL" <<<"$out" || { echo "no mask: $out"; return 1; }
  out=$(ranks 2 "$mto" train --init "$work/pruned" --teacher "$work/nonexistent" --train-samples 16 \
        --out "$work/x" 2>&1) && { echo "trained without a teacher"; return 1; }
  expect_error_line "$out" "kd_loss: the teacher checkpoint $work/nonexistent does not exist" || return 1
  [ ! -e "$work/x" ] || { echo "a failed run wrote $work/x"; return 1; }
}

# A plain safetensors set (the weights of a checkpoint without its MANIFEST and modelopt
# state) imported on 2 ranks at tp 2 evaluates as the original does.
import_plain_safetensors() {
  local plain="$work/plain"
  mkdir -p "$plain" && cp "$work/gpt"/*.safetensors "$work/gpt/model.safetensors.index.json" "$plain/" || return 1
  # A --rename that no name starts with is a typo most likely: rank 0 says so.
  out=$(ranks 2 "$mto" import "$plain" --model-like "gpt:$gpt_args" --tp 2 --rename transfomer.= \
        --out "$work/imported" 2>&1) || { echo "$out"; return 1; }
  grep -q "^read [0-9]* tensors of gpt:.* from $plain on 2 rank(s) (dp=1, tp=2)" <<<"$out" || { echo "$out"; return 1; }
  [ "$(grep -c "^warning: --rename transfomer.= matched no tensor name of $plain$" <<<"$out")" = 1 ] ||
    { echo "$out"; return 1; }
  grep -q "no checksums" <<<"$out" || { echo "$out"; return 1; }
  "$mto" inspect "$work/imported" --verify >/dev/null || return 1
  one=$("$mto" eval "$work/gpt" --samples 16 --json) || { echo "$one"; return 1; }
  two=$("$mto" eval "$work/imported" --samples 16 --json) || { echo "$two"; return 1; }
  close "$(field "$one" loss)" "$(field "$two" loss)" 1e-6 || return 1
  # A model the set does not fit names what differs, on one line.
  out=$("$mto" import "$plain" --model-like 'gpt:{"width": 32, "depth": 2, "heads": 2, "context": 16}' \
        --out "$work/bad" 2>&1) && { echo "imported a deeper model: $out"; return 1; }
  expect_error_line "$out" "missing from the set: blocks.1" || return 1
  [ ! -e "$work/bad" ] || { echo "a failed import wrote $work/bad"; return 1; }
}

# The int8 checkpoint exported on a tp group as real int8 weights evaluates exactly as the
# fake-quantized one on one process; its JSON files are checksummed like the weights.
export_deployable() {
  out=$(ranks 2 "$mto" export "$work/int8" --tp 2 --out "$work/deployed" 2>&1) || { echo "$out"; return 1; }
  grep -q "^exported $work/int8 to $work/deployed on 2 rank(s) (dp=1, tp=2)" <<<"$out" || { echo "$out"; return 1; }
  grep -q "^hf_quant_config.json: quant_algo W8A8_SQ_PER_CHANNEL, exclude_modules \[lm_head\]$" <<<"$out" ||
    { echo "$out"; return 1; }
  out=$("$mto" inspect "$work/deployed" --verify) || { echo "$out"; return 1; }
  for pattern in "blocks.0.fc1.weight  *I8  *\[128, 32\]" "blocks.0.fc1.weight_scale  *F32  *\[128\]" \
                 "blocks.0.fc1.input_scale  *F32  *\[\]" "lm_head.weight  *F32  *\[256, 32\]" "export_quantize"; do
    grep -q "$pattern" <<<"$out" || { echo "missing '$pattern' in:"; echo "$out"; return 1; }
  done
  grep -q "_amax" <<<"$out" && { echo "quantizer buffers left in the export:"; echo "$out"; return 1; }
  grep -q '"quant_method": "modelopt"' "$work/deployed/config.json" || { cat "$work/deployed/config.json"; return 1; }
  fake=$("$mto" eval "$work/int8" --samples $eval_samples --json) || { echo "$fake"; return 1; }
  real=$("$mto" eval "$work/deployed" --samples $eval_samples --json) || { echo "$real"; return 1; }
  [ "$(field "$fake" loss)" = "$(field "$real" loss)" ] || { echo "losses differ: $fake / $real"; return 1; }
  # A float checkpoint has nothing to deploy.
  out=$("$mto" export "$work/gpt" --out "$work/x" 2>&1) && { echo "exported a float model"; return 1; }
  expect_error_line "$out" "export_quantize: the model has no quantizers" || return 1
  # A changed byte in config.json fails the restore, naming the file.
  cp -r "$work/deployed" "$work/deployed-bad" && sed -i 's/modelopt/modelOpt/' "$work/deployed-bad/config.json"
  out=$("$mto" eval "$work/deployed-bad" --samples 8 2>&1) && { echo "restored a corrupt config.json"; return 1; }
  expect_error_line "$out" "config.json"
}

# A calibration mode after a preset runs after the preset's own calibration (SmoothQuant
# here); after a "max" preset it replaces the max_calibrate that the preset would add.
calibration_after_a_preset() {
  out=$("$mto" optimize "$work/gpt" --mode quantize:int8_smoothquant --mode max_calibrate --calib-samples 8 \
        --out "$work/sq-max" 2>&1) || { echo "$out"; return 1; }
  out=$("$mto" inspect "$work/sq-max") || { echo "$out"; return 1; }
  for pattern in "1. quantize" "2. smoothquant_calibrate" "3. max_calibrate" "blocks.0.fc1.input_quantizer._pre_quant_scale"; do
    grep -q "$pattern" <<<"$out" || { echo "missing '$pattern' in:"; echo "$out"; return 1; }
  done
  out=$("$mto" optimize "$work/gpt" --mode quantize:int8 --mode max_calibrate --calib-samples 8 \
        --out "$work/int8-max" 2>&1) || { echo "$out"; return 1; }
  out=$("$mto" inspect "$work/int8-max") || { echo "$out"; return 1; }
  grep -q "^modes        2$" <<<"$out" || { echo "not 2 modes:"; echo "$out"; return 1; }
}

help_mentions_tp() {
  for command in train eval optimize generate import export; do
    out=$("$mto" $command --help) || { echo "$out"; return 1; }
    grep -q -- "--tp" <<<"$out" || { echo "'mto $command --help' does not mention --tp:"; echo "$out"; return 1; }
  done
  "$mto" train --help | grep -q "gpt" && "$mto" --help | grep -q "generate"
}

case $group in
  mesh)
    check train_on_2x2_mesh train_on_2x2_mesh
    check eval_same_on_any_mesh eval_same_on_any_mesh
    check quantize_int8_eval_on_3 quantize_int8_eval_on_3
    check export_deployable export_deployable
    check import_plain_safetensors import_plain_safetensors
    check generate_is_deterministic generate_is_deterministic
    check tensor_parallel_size_errors tensor_parallel_size_errors
    check help_mentions_tp help_mentions_tp
    ;;
  pruning)
    out=$(train_gpt) || { echo "cannot train the GPT the checks read:"; echo "$out"; exit 1; }
    check prune_and_sparsify prune_and_sparsify
    check distill_from_the_float_gpt distill_from_the_float_gpt
    check missing_corpus_names_the_package missing_corpus_names_the_package
    check generate_needs_a_language_model generate_needs_a_language_model
    check calibration_after_a_preset calibration_after_a_preset
    ;;
  auto_quantize)
    check auto_quantize_within_bits auto_quantize_within_bits
    ;;
  *)
    echo "unknown group '$group': mesh, pruning or auto_quantize" >&2
    exit 2
    ;;
esac

finish
