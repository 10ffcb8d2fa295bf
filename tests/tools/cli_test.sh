#!/usr/bin/env bash
# End-to-end tests of the `mto` command line on real mpirun ranks and real Fashion-MNIST:
# train on 2 ranks, optimize (quantize, calibration sharded; 2:4 sparsity; pruning search
# sharded and resumed) on 2, fine-tune, evaluate on 1 and 3, inspect and verify on one
# process, and the errors a user meets, each one clear line.
#   cli_test.sh MTO_BINARY NEWER_STATE_BINARY
# Writes one JUnit test case per check to $XML_OUTPUT_FILE.
set -uo pipefail
mto=$(realpath "$1")
newer_state=$(realpath "$2")
work="${TEST_TMPDIR:-$(mktemp -d)}/cli"
mkdir -p "$work"
source "$(dirname "$0")/cli_harness.sh" cli_test

help_works() {
  for command in "" train optimize eval inspect generate import export; do
    out=$("$mto" $command --help) || return 1
    grep -q "Usage" <<<"$out" || { echo "no usage for '$command'"; return 1; }
  done
  "$mto" optimize --help | grep -q "int8, fp8, int4_blockwise"
}

# rank0_late COMMAND...: COMMAND on 2 mpirun ranks, rank 0 starting a second after rank 1.
rank0_late() {
  mpirun --allow-run-as-root --oversubscribe --bind-to none -np 1 sh -c 'sleep 1; exec "$@"' sh "$@" : -np 1 "$@"
}

# An unknown subcommand is an error that names it, with or without --help and global options.
unknown_command_is_named() {
  for args in "bogus" "bogus --help" "--threads 2 bogus" "-v bogus ckpt"; do
    out=$("$mto" $args 2>&1) && { echo "mto $args succeeded: $out"; return 1; }
    expect_error_line "$out" "unknown command 'bogus' (commands: train, optimize, eval, inspect, generate, import, export" ||
      return 1
  done
  out=$(ranks 2 "$mto" bogus 2>&1) && { echo "mto bogus succeeded on 2 ranks"; return 1; }
  expect_error_line "$out" "unknown command 'bogus'" || return 1
  # Rank 0, which alone reports, starting a second late: mpirun kills the job when a rank
  # exits non-zero, so the other rank must not leave before rank 0 has reported.
  out=$(rank0_late "$mto" bogus 2>&1) && { echo "mto bogus succeeded with rank 0 late"; return 1; }
  expect_error_line "$out" "unknown command 'bogus'" || return 1
  # The same for a usage error, which CLI11 reports.
  out=$(rank0_late "$mto" train 2>&1) && { echo "mto train without --out succeeded with rank 0 late"; return 1; }
  grep -q "^mto: error: --out is required" <<<"$out" || { echo "$out"; return 1; }
}

train_two_ranks() {
  out=$(ranks 2 "$mto" train --model fashion_cnn --model-args '{"channels": [4, 8], "hidden": 32}' \
        --epochs 1 --train-samples 4096 --batch-size 32 --lr 3e-3 --out "$work/float" 2>&1) || { echo "$out"; return 1; }
  grep -q "training fashion_cnn on 4096 images, 2 rank(s)" <<<"$out" || { echo "$out"; return 1; }
  grep -q "^saved $work/float in" <<<"$out" || { echo "$out"; return 1; }
  # Progress and results come from rank 0 only.
  [ "$(grep -c '^saved ' <<<"$out")" = 1 ] || { echo "$out"; return 1; }
  [ -f "$work/float/MANIFEST" ] && [ -f "$work/float/model-00002-of-00002.safetensors" ]
}

optimize_int8() {
  out=$(ranks 2 "$mto" optimize "$work/float" --mode quantize:int8 --calib-samples 256 --out "$work/int8" 2>&1) ||
    { echo "$out"; return 1; }
  grep -q "applied quantize + max_calibrate on 2 rank(s) .* over 256 images; 1 collective(s)" <<<"$out" ||
    { echo "$out"; return 1; }
}

optimize_with_config_file() {
  cat >"$work/w4.json" <<'JSON'
{"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 16}},
               "*input_quantizer": {"enable": false}, "default": {"enable": false}},
 "algorithm": "max"}
JSON
  ranks 2 "$mto" optimize "$work/float" --mode quantize --config "$work/w4.json" --out "$work/w4" >/dev/null 2>&1 &&
    grep -q "4 of 12 quantizers enabled, 4 calibrated: 4 x int4 blocks of 16" <<<"$("$mto" inspect "$work/w4")" ||
    return 1
  # A config file that is JSON but no object is named.
  echo '[]' >"$work/list.json"
  out=$("$mto" optimize "$work/float" --mode quantize --config "$work/list.json" --out "$work/x" 2>&1) && return 1
  expect_error_line "$out" "--config $work/list.json: config of mode 'quantize': must be a JSON object, got \[\]"
}

# Accuracy from `mto eval --json`.
accuracy() { sed -E 's/.*"accuracy":([-0-9.eE+]+).*/\1/' <<<"$1"; }

eval_any_world_size() {
  one=$(ranks 1 "$mto" eval "$work/int8" --samples 600 --json 2>/dev/null) || return 1
  three=$(ranks 3 "$mto" eval "$work/int8" --samples 600 --json --strategy read-share 2>/dev/null) || return 1
  echo "1 rank: $one"
  echo "3 ranks: $three"
  grep -q '"samples":600' <<<"$three" && grep -q '"ranks":3' <<<"$three" || return 1
  # The same checkpoint gives the same predictions on any number of ranks.
  [ "$(accuracy "$one")" = "$(accuracy "$three")" ] || return 1
  # A classifier does not split over tensor-parallel ranks: --tp is refused, naming both.
  out=$(ranks 2 "$mto" eval "$work/int8" --tp 2 --samples 10 2>&1) && { echo "evaluated at tp 2"; return 1; }
  expect_error_line "$out" "--tp 2: $work/int8 does not split over tensor-parallel ranks (only the gpt does)" || return 1
  # A trained model beats chance (10%) by far.
  awk -v a="$(accuracy "$one")" 'BEGIN { exit !(a > 0.4) }'
}

# Fails, printing the JSON, if `mto inspect --json` printed an integer as a string (Protobuf's
# JSON form of int64 fields: "channel_divisor": "4", "amax_shape": ["16", "1"]).
integers_are_numbers() {
  ! grep -qE '^ *("[a-z_]+": )?"-?[0-9]+",?$' <<<"$1" || { echo "an integer printed as a string in:"; echo "$1"; return 1; }
}

inspect_text_and_json() {
  out=$("$mto" inspect "$work/int8" --verify) || { echo "$out"; return 1; }
  for pattern in "model-like   fashion_cnn" "1. quantize" "2. max_calibrate" "conv1.weight_quantizer._amax" \
                 "verified     every checksum matches" "written by   mto .* on 2 rank" \
                 "mesh         (dp=2, tp=1)" "conv1.weight  *F32  *\[[0-9, ]*\]  *whole  " \
                 "  name  .*  split  *file  *bytes$" \
                 '^         "\*weight_quantizer": {"axis":0,"num_bits":8},$'; do
    grep -q "$pattern" <<<"$out" || { echo "missing '$pattern' in:"; echo "$out"; return 1; }
  done
  json=$("$mto" inspect "$work/int8" --json --verify) || return 1
  grep -q '"verified": true' <<<"$json" && grep -q '"factory": "fashion_cnn"' <<<"$json" &&
    grep -q '"mode": "max_calibrate"' <<<"$json" && grep -q '"mesh": "(dp=2, tp=1)"' <<<"$json" &&
    grep -q '"split": "whole"' <<<"$json" || { echo "$json"; return 1; }
  # The quantizers' buffer shapes (repeated int64) are numbers.
  grep -qE '"amax_shape": \[$' <<<"$json" || { echo "no amax_shape in:"; echo "$json"; return 1; }
  integers_are_numbers "$json" || return 1
  # The same checkpoint prints the same way every time (maps in sorted order).
  again=$("$mto" inspect "$work/int8" --json --verify) || return 1
  [ "$json" = "$again" ] || { echo "two inspections differ:"; diff <(echo "$json") <(echo "$again") | head; return 1; }
  # Under mpirun, rank 0 alone prints, its progress in readable units.
  out=$(ranks 2 "$mto" inspect "$work/int8" --verify 2>&1) || { echo "$out"; return 1; }
  [ "$(grep -c '^verified ' <<<"$out")" = 1 ] &&
    [ "$(grep -cE '^verify  [0-9.]+ (kB|MB) in [0-9.]+ s \([0-9.]+ (kB|MB|GB)/s\)$' <<<"$out")" = 1 ] ||
    { echo "not one report from 2 ranks:"; echo "$out"; return 1; }
}

# Every rank must run the same command: a rank given another --batch-size would take other
# steps (its collectives stop matching); refused at once on every rank, naming both.
ranks_run_the_same_command() {
  printf '#!/bin/bash\n[ "$OMPI_COMM_WORLD_RANK" = 1 ] && set -- "${@/--batch-size=64/--batch-size=128}"\nexec "$@"\n' \
    >"$work/rank1_other_batch" && chmod +x "$work/rank1_other_batch"
  out=$(ranks 2 "$work/rank1_other_batch" "$mto" train --model fashion_mlp --train-samples 256 --batch-size=64 \
        --out "$work/x" 2>&1) && { echo "trained with another batch size on rank 1"; return 1; }
  expect_error_line "$out" "rank 1 runs 'mto train .*--batch-size=128 .*' but rank 0 runs 'mto train .*--batch-size=64 .*': mpirun must start every rank with the same command"
}

# A state written by a newer version (a config field, a mode this binary does not know):
# restore refuses it, naming the field; inspect still shows the rest, saying why not that.
newer_state_is_shown() {
  cp -r "$work/int8" "$work/newer"
  "$newer_state" "$work/newer" || return 1
  out=$("$mto" inspect "$work/newer" --verify) || { echo "$out"; return 1; }
  for pattern in "1. quantize" "(cannot read it: config of quantize: the state holds field 99 of " \
                 "which this version does not know (was it written by a newer one?))" \
                 "2. mode_of_a_newer_version" "(mode not known to this binary: " "verified     every checksum"; do
    grep -qF "$pattern" <<<"$out" || { echo "missing '$pattern' in:"; echo "$out"; return 1; }
  done
  json=$("$mto" inspect "$work/newer" --json) || { echo "$json"; return 1; }
  grep -q '"note": "(cannot read it: config of quantize' <<<"$json" || { echo "$json"; return 1; }
  out=$("$mto" eval "$work/newer" --samples 10 2>&1) && { echo "eval restored a newer state"; return 1; }
  expect_error_line "$out" "the state holds field 99 of"
}

corrupt_checkpoint_is_named() {
  cp -r "$work/int8" "$work/corrupt"
  shard="$work/corrupt/model-00001-of-00002.safetensors"
  size=$(stat -c %s "$shard")
  printf '\xff' | dd of="$shard" bs=1 seek=$((size - 3)) conv=notrunc status=none
  out=$("$mto" inspect "$work/corrupt" --verify 2>&1) && { echo "verify passed a corrupt shard"; return 1; }
  expect_error_line "$out" "checksum mismatch.*model-00001-of-00002.safetensors" || return 1
  out=$(ranks 2 "$mto" eval "$work/corrupt" --samples 10 2>&1) && { echo "eval restored a corrupt shard"; return 1; }
  expect_error_line "$out" "model-00001-of-00002.safetensors"
}

# one_error_line PATTERN COMMAND...: COMMAND fails, printing one line only, an error matching.
one_error_line() {
  local pattern=$1 out
  shift
  out=$("$@" 2>&1) && { echo "succeeded: $*"; return 1; }
  [ "$(wc -l <<<"$out")" = 1 ] || { echo "more than one line from $*:"; echo "$out"; return 1; }
  expect_error_line "$out" "$pattern"
}

# Bad option values, and LibTorch's own errors: one line each, naming the culprit, with no
# "Run with --help" line and no C++ stack trace.
bad_values_are_named() {
  local train=("$mto" train --model fashion_cnn --model-args '{"channels": [4, 8], "hidden": 32}' --out "$work/x")
  one_error_line "--epochs: must be a number above 0, not '0' (--help lists the options)" "${train[@]}" --epochs 0 ||
    return 1
  one_error_line "--lr: must be a number above 0, not 'inf'" "${train[@]}" --lr inf || return 1
  one_error_line "--seed: must be a number, 0 or above, not '-1'" "${train[@]}" --seed -1 || return 1
  one_error_line "--train-samples: must be a count above 0 (or negative for all), not '0'" "${train[@]}" \
    --train-samples 0 || return 1
  one_error_line "--samples: must be a count above 0 (or negative for all), not '0'" "$mto" eval "$work/float" \
    --samples 0 || return 1
  one_error_line "--out is required" "$mto" train --model fashion_cnn || return 1
  one_error_line "--kd-weight: must be a number from 0 to 1, not 'nan'" "${train[@]}" --kd-weight nan || return 1
  one_error_line "--kd-weight requires --teacher" "${train[@]}" --kd-weight 0.5 || return 1
  # A teacher is a checkpoint, even by a plain name: never an untrained model of that name.
  one_error_line "kd_loss: the teacher checkpoint ./fashion_cnn does not exist" "$mto" train --init "$work/float" \
    --teacher fashion_cnn --train-samples 16 --out "$work/x" || return 1
  one_error_line "--threads: must be a whole number from 1 to 1024, not '100000'" "$mto" --threads 100000 \
    inspect "$work/float" || return 1
  # The global options may follow the command too.
  one_error_line "cannot open checkpoint directory $work/nowhere: No such file or directory \[mto::CheckpointError\]" \
    "$mto" eval "$work/nowhere" -v || return 1
  [ "$("$mto" --version)" = "mto 0.1.0" ] || { "$mto" --version; return 1; }
  one_error_line "--model: bogus not in {fashion_cnn,fashion_mlp,gpt}" "$mto" train --model bogus --out "$work/x" ||
    return 1
  one_error_line "no checkpoint directory given (the path is empty)" "$mto" eval "" || return 1
  one_error_line "--config needs exactly one --mode without a preset to apply to (got 0)" "$mto" optimize \
    "$work/float" --mode auto_quantize --config /dev/null --out "$work/x" || return 1
  one_error_line "--mode kd_loss: distillation trains the student; use mto train --teacher" "$mto" optimize \
    "$work/float" --mode kd_loss --out "$work/x" || return 1
  # A search option with no search to apply it to would be ignored.
  one_error_line "--search-candidates applies to the search of fastnas, and no --mode runs one" "$mto" optimize \
    "$work/float" --mode quantize:int8 --search-candidates 4 --out "$work/x" || return 1
  one_error_line "--search-checkpoint applies to the search of fastnas or auto_quantize, and no --mode runs one" \
    "$mto" optimize "$work/float" --mode sparse_magnitude --search-checkpoint "$work/s" --out "$work/x" || return 1
  one_error_line "--formats applies to the search of auto_quantize, and no --mode runs one" "$mto" optimize \
    "$work/float" --mode fastnas:params=0.5 --formats int8 --out "$work/x" || return 1
  # 627 TB, more than any address space: LibTorch's allocator refuses it.
  one_error_line "you tried to allocate 627199999993728 bytes" "$mto" train --model fashion_cnn \
    --model-args '{"hidden": 99999999999}' --train-samples 10 --out "$work/x" || return 1
  one_error_line "gpt: a vocab of 100 cannot take the text's tokens, which are bytes: it needs at least 256" \
    "$mto" train --model gpt --model-args '{"width": 32, "heads": 2, "depth": 1, "context": 16, "vocab": 100}' \
    --train-samples 32 --out "$work/x"
}

# A deployed checkpoint holds quantized codes that no optimizer step changes: fine-tuning
# one is refused, naming it.
deployed_is_not_fine_tuned() {
  out=$("$mto" export "$work/int8" --out "$work/int8-deployed" 2>&1) || { echo "$out"; return 1; }
  one_error_line "--init $work/int8-deployed is a deployed checkpoint (mode export_quantize)" \
    "$mto" train --init "$work/int8-deployed" --epochs 1 --train-samples 64 --out "$work/x"
}

# An export that replaces its source compares its size with the source as it was.
export_in_place() {
  cp -r "$work/int8" "$work/in-place"
  out=$("$mto" export "$work/in-place" --out "$work/in-place" 2>&1) || { echo "$out"; return 1; }
  ratio=$(sed -nE 's/.* MiB, ([0-9.]+)x the source checkpoint .*/\1/p' <<<"$out")
  awk -v r="$ratio" 'BEGIN { exit !(r > 0 && r < 0.9) }' || { echo "ratio '$ratio' in:"; echo "$out"; return 1; }
}

# Past a file-size limit (ulimit -f), a save fails with one error line and leaves the
# checkpoint it would have replaced as it was, with nothing beside it.
file_size_limit() {
  cp -r "$work/float" "$work/limited"
  out=$( (ulimit -f 20 && "$mto" train --model fashion_cnn --model-args '{"channels": [4, 8], "hidden": 32}' \
          --epochs 1 --train-samples 64 --out "$work/limited") 2>&1) && { echo "saved past the limit"; return 1; }
  expect_error_line "$out" "cannot write at offset [0-9]* of .*: File too large" || return 1
  "$mto" inspect "$work/limited" --verify >/dev/null || return 1
  cmp "$work/float/MANIFEST" "$work/limited/MANIFEST" || return 1
  [ -z "$(ls -A "$work" | grep '^\.limited')" ] || { echo "left beside it: $(ls -A "$work")"; return 1; }
}

# --out is checked before any work: what the save would delete is refused, named, and left
# as it was.
out_is_checked_first() {
  mkdir -p "$work/project/src" && echo "include *.py" >"$work/project/MANIFEST" && echo keep >"$work/project/notes"
  out=$("$mto" optimize "$work/float" --mode quantize:int8 --calib-samples 32 --out "$work/project" 2>&1) &&
    { echo "replaced a directory with a MANIFEST of another kind"; return 1; }
  expect_error_line "$out" "refusing to replace $work/project: it is not a readable mto checkpoint" || return 1
  [ "$(cat "$work/project/notes")" = keep ] || return 1
  cp -r "$work/float" "$work/annotated" && echo mine >"$work/annotated/README.md"
  out=$("$mto" optimize "$work/float" --mode quantize:int8 --calib-samples 32 --out "$work/annotated" 2>&1) &&
    { echo "replaced a checkpoint holding a file of the user"; return 1; }
  expect_error_line "$out" "refusing to replace $work/annotated: it holds what its checkpoint does not record, which would be lost: README.md (move it out first)" ||
    return 1
  # Refused before the search runs, not at its save: the same directory, or one inside it.
  out=$("$mto" optimize "$work/float" --mode fastnas:params=0.5 --search-checkpoint "$work/search" --out "$work/search/" \
        2>&1) && { echo "searched into the --out directory"; return 1; }
  expect_error_line "$out" "--search-checkpoint $work/search is --out $work/search/ or lies inside it" || return 1
  ! grep -q "searched" <<<"$out" || { echo "$out"; return 1; }
  out=$("$mto" optimize "$work/float" --mode fastnas:params=0.5 --search-checkpoint "$work/res/search" \
        --out "$work/res" 2>&1) && { echo "searched inside the --out directory"; return 1; }
  expect_error_line "$out" "lies inside it" || return 1
  [ ! -e "$work/res" ] || { echo "made $work/res"; return 1; }
}

missing_directory() {
  out=$("$mto" inspect "$work/nowhere" 2>&1) && return 1
  expect_error_line "$out" "$work/nowhere" || return 1
  # Under mpirun rank 0 alone inspects, and reports its error even when it starts late.
  out=$(rank0_late "$mto" inspect "$work/nowhere" 2>&1) && { echo "inspect succeeded on 2 ranks"; return 1; }
  expect_error_line "$out" "$work/nowhere" || return 1
  # --verbose: every rank's line, each whole, with the error's type.
  out=$(ranks 2 "$mto" --verbose eval "$work/nowhere" 2>&1) && { echo "eval succeeded"; return 1; }
  [ "$(grep -c "^mto: error: cannot open checkpoint directory $work/nowhere: .* \[mto::CheckpointError\]$" <<<"$out")" = 2 ] ||
    { echo "not one whole line per rank:"; echo "$out"; return 1; }
}

unknown_mode_and_preset() {
  out=$(ranks 2 "$mto" optimize "$work/float" --mode quantise --out "$work/x" 2>&1) && return 1
  expect_error_line "$out" "quantise" || return 1
  out=$(ranks 2 "$mto" optimize "$work/float" --mode quantize:int3 --out "$work/x" 2>&1) && return 1
  expect_error_line "$out" "unknown quantization preset 'int3' (known: int8, fp8, int4_blockwise, int8_smoothquant, int4_awq)"
}

chain_that_cannot_apply() {
  out=$(ranks 2 "$mto" optimize "$work/int8" --mode quantize:fp8 --out "$work/x" 2>&1) && return 1
  expect_error_line "$out" "already quantized"
}

prune_search_resume_fine_tune() {
  local args=(optimize "$work/float" --mode fastnas:params=0.5 --mode export_nas --search-candidates 4
              --val-samples 256 --calib-samples 64 --search-checkpoint "$work/search" --out "$work/pruned")
  out=$(ranks 2 "$mto" "${args[@]}" 2>&1) || { echo "$out"; return 1; }
  grep -q "^searched 4 candidates within params=0.5 on 2 rank(s) in .* (rank 0 scored 2)$" <<<"$out" ||
    { echo "$out"; return 1; }
  fraction=$(sed -nE 's/.* \(([0-9.]+) of the parameters\).*/\1/p' <<<"$out")
  awk -v f="$fraction" 'BEGIN { exit !(f > 0 && f <= 0.5) }' || { echo "fraction '$fraction' in:"; echo "$out"; return 1; }
  # The same search again finds every score in the per-rank checkpoints.
  out=$(ranks 2 "$mto" "${args[@]}" 2>&1) || { echo "$out"; return 1; }
  grep -q "(rank 0 scored 0, 2 from its checkpoint)" <<<"$out" || { echo "$out"; return 1; }
  json=$("$mto" inspect "$work/pruned" --json --verify) || return 1
  grep -q '"mode": "export_nas"' <<<"$json" || { echo "$json"; return 1; }
  # The int64 fields of configs and metadata print as JSON numbers, not as Protobuf's strings.
  grep -q '"channel_divisor": 4,\?$' <<<"$json" && grep -qE '"(max_width|width|positions)": [0-9]+,?$' <<<"$json" ||
    { echo "int64 fields not printed as numbers in:"; echo "$json"; return 1; }
  integers_are_numbers "$json" || return 1
  grep -qE '"channel_divisor": ?4([,}]|$)' <<<"$("$mto" inspect "$work/pruned")" || { echo "no channel_divisor 4"; return 1; }
  out=$(ranks 2 "$mto" train --init "$work/pruned" --epochs 1 --train-samples 512 --out "$work/pruned-ft" 2>&1) ||
    { echo "$out"; return 1; }
  out=$(ranks 3 "$mto" eval "$work/pruned-ft" --samples 300 --json 2>&1) || { echo "$out"; return 1; }
  grep -q '"samples":300' <<<"$out" || { echo "$out"; return 1; }
}

sparse_then_quantize() {
  out=$(ranks 2 "$mto" optimize "$work/float" --mode sparse_magnitude --mode quantize:int8 --calib-samples 128 \
        --out "$work/sparse-int8" 2>&1) || { echo "$out"; return 1; }
  grep -q "applied sparse_magnitude + quantize + max_calibrate on 2 rank(s)" <<<"$out" || { echo "$out"; return 1; }
  grep -q "fc1._weight_mask  *BOOL" <<<"$("$mto" inspect "$work/sparse-int8")" || return 1
  # Export wants the masks folded in first, and says how.
  out=$(ranks 2 "$mto" export "$work/sparse-int8" --out "$work/x" 2>&1) && { echo "exported with masks"; return 1; }
  expect_error_line "$out" "not folded into its weights yet; apply export_sparse first" || return 1
  out=$(ranks 2 "$mto" optimize "$work/sparse-int8" --mode export_sparse --out "$work/sparse-int8-folded" 2>&1) ||
    { echo "$out"; return 1; }
  # No data in export_sparse: its line names none.
  grep -q "^applied export_sparse on 2 rank(s) (dp=2, tp=1) in [0-9.]* s (0 collective(s), 0 bytes)$" <<<"$out" ||
    { echo "$out"; return 1; }
  out=$(ranks 2 "$mto" export "$work/sparse-int8-folded" --out "$work/sparse-int8-deployed" 2>&1) ||
    { echo "$out"; return 1; }
  out=$(ranks 2 "$mto" optimize "$work/int8" --mode sparse_magnitude --out "$work/x" 2>&1) && return 1
  expect_error_line "$out" "quantize does not allow sparse_magnitude to be its next mode." || return 1
  out=$(ranks 2 "$mto" optimize "$work/float" --mode fastnas --out "$work/x" 2>&1) && return 1
  expect_error_line "$out" "needs the constraint of its search, e.g. fastnas:params=0.5"
}

check help_works help_works
check unknown_command_is_named unknown_command_is_named
check train_two_ranks train_two_ranks
check optimize_int8 optimize_int8
check optimize_with_config_file optimize_with_config_file
check eval_any_world_size eval_any_world_size
check inspect_text_and_json inspect_text_and_json
check newer_state_is_shown newer_state_is_shown
check ranks_run_the_same_command ranks_run_the_same_command
check corrupt_checkpoint_is_named corrupt_checkpoint_is_named
check missing_directory missing_directory
check out_is_checked_first out_is_checked_first
check bad_values_are_named bad_values_are_named
check file_size_limit file_size_limit
check deployed_is_not_fine_tuned deployed_is_not_fine_tuned
check export_in_place export_in_place
check unknown_mode_and_preset unknown_mode_and_preset
check chain_that_cannot_apply chain_that_cannot_apply
check prune_search_resume_fine_tune prune_search_resume_fine_tune
check sparse_then_quantize sparse_then_quantize

finish
