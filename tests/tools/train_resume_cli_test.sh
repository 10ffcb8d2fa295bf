#!/usr/bin/env bash
# `mto train --save-every` and `--resume` on real mpirun ranks: a job killed with SIGKILL
# mid-training and restarted with --resume ends with the same weights, bit for bit, as a job
# never stopped (on a (dp=2, tp=1) mesh and on a (dp=1, tp=2) mesh, whose Adam state is split
# like its parameters); a training checkpoint evaluates like any checkpoint; and the errors
# of a resume that cannot be one.
#   train_resume_cli_test.sh MTO_BINARY
# Writes one JUnit test case per check to $XML_OUTPUT_FILE.
set -uo pipefail
mto=$(realpath "$1")
work="${TEST_TMPDIR:-$(mktemp -d)}/train_resume_cli"
mkdir -p "$work"
source "$(dirname "$0")/cli_harness.sh" train_resume_cli_test

# A few seconds of training on two shared cores (128 steps on (dp=2, tp=1), 256 on
# (dp=1, tp=2)), saved every 8 steps.
gpt_args='{"width": 64, "depth": 2, "heads": 2, "context": 32}'
train() { # train TP OUT [--resume]
  ranks 2 "$mto" train --model gpt --tp "$1" --model-args "$gpt_args" --train-samples 1024 --batch-size 8 \
    --epochs 2 --save-every 8 --out "$2" "${@:3}"
}
# The value of NUMBER field NAME in training_state.json of DIR.
state_field() { sed -nE "s/^  \"$2\": ([0-9]+),?$/\1/p" "$1/training_state.json"; }

# killed_and_resumed TP: an uninterrupted job and a job killed after its first checkpoint and
# resumed end with the same shard files.
killed_and_resumed() {
  local tp=$1 whole="$work/whole-tp$1" killed="$work/killed-tp$1"
  out=$(train "$tp" "$whole" 2>&1) || { echo "$out"; return 1; }
  grep -q "^[0-9]* training checkpoint(s) saved in the background" <<<"$out" || { echo "$out"; return 1; }
  train "$tp" "$killed" >"$work/killed-tp$tp.log" 2>&1 &
  local job=$!
  for _ in $(seq 600); do [ -f "$killed/MANIFEST" ] && break; sleep 0.05; done
  sleep 0.3
  pkill -KILL -f -- "--out $killed" || true
  wait $job && { echo "the job ended before the kill:"; cat "$work/killed-tp$tp.log"; return 1; }
  local step
  step=$(state_field "$killed" step)
  [ -n "$step" ] && [ "$step" -gt 0 ] && [ $((step % 8)) = 0 ] ||
    { echo "the killed job left no training checkpoint mid-way (step '$step')"; return 1; }
  out=$(train "$tp" "$killed" --resume 2>&1) || { echo "$out"; return 1; }
  grep -q "^resuming from $killed at step $step of \(128\|256\) " <<<"$out" || { echo "$out"; return 1; }
  echo "killed at step $step, resumed"
  # Mid-epoch, the resumed epoch's rate counts only the examples this run trained on.
  if [ $((step % (128 * tp))) != 0 ] && [ $((step % (64 * tp))) != 0 ]; then
    grep -q "^epoch [12]/2  .* in [0-9.]* s (.*/s) after .* before the resume  loss " <<<"$out" || { echo "$out"; return 1; }
  fi
  for shard in "$whole"/*.safetensors; do
    cmp "$shard" "$killed/$(basename "$shard")" || { echo "$(basename "$shard") differs"; return 1; }
  done
  # The end of training replaced the training checkpoint with the model alone.
  [ ! -e "$killed/training_state.json" ] || { echo "the final checkpoint keeps its training state"; return 1; }
  out=$(train "$tp" "$killed" --resume 2>&1) && { echo "resumed a finished model"; return 1; }
  expect_error_line "$out" "--resume: $killed holds a finished model, not a training checkpoint .*--init $killed"
}
killed_and_resumed_dp2() { killed_and_resumed 1; }
killed_and_resumed_tp2() { killed_and_resumed 2; }

training_checkpoint_evaluates_and_refuses_other_options() {
  local dir="$work/partial"
  # A checkpoint of the first 8 steps: stop the job after them.
  ranks 2 "$mto" train --model gpt --model-args "$gpt_args" --train-samples 1024 --batch-size 8 --epochs 2 \
    --save-every 8 --out "$dir" >"$work/partial.log" 2>&1 &
  local job=$!
  for _ in $(seq 600); do [ -f "$dir/MANIFEST" ] && break; sleep 0.05; done
  pkill -KILL -f -- "--out $dir" || true
  wait $job
  [ -f "$dir/training_state.json" ] || { echo "no training checkpoint"; cat "$work/partial.log"; return 1; }
  out=$("$mto" eval "$dir" --samples 16 --json 2>&1) || { echo "$out"; return 1; }
  grep -q '"perplexity"' <<<"$out" || { echo "$out"; return 1; }
  out=$("$mto" inspect "$dir" --all 2>&1) || { echo "$out"; return 1; }
  grep -q "optimizer.blocks.0.fc1.weight.exp_avg " <<<"$out" || { echo "$out"; return 1; }
  # Three extra tensors (exp_avg, exp_avg_sq, step) for each of the GPT's 29 parameters.
  grep -q "^             87 of them saved beside the model (extra" <<<"$out" || { echo "$out"; return 1; }
  out=$("$mto" inspect "$dir" --json 2>&1) || { echo "$out"; return 1; }
  [ "$(grep -o '"extra": *true' <<<"$out" | wc -l)" = 87 ] || { echo "$out" | head -40; return 1; }
  out=$(ranks 2 "$mto" train --model gpt --model-args "$gpt_args" --train-samples 1024 --batch-size 16 --epochs 2 \
        --save-every 8 --out "$dir" --resume 2>&1) && { echo "resumed with another batch size"; return 1; }
  expect_error_line "$out" "--resume: $dir was saved by a job with batch_size = 8, but this job has batch_size = 16" ||
    return 1
  out=$("$mto" train --model gpt --model-args "$gpt_args" --train-samples 1024 --batch-size 8 --epochs 2 \
        --save-every 8 --out "$dir" --resume 2>&1) && { echo "resumed on another world size"; return 1; }
  expect_error_line "$out" "was saved by a job with ranks = 2, but this job has ranks = 1" || return 1
  # Rerun without --resume, the unfinished job would lose its state: by the same command, or
  # from its own weights into its own directory.
  out=$("$mto" train --model gpt --model-args "$gpt_args" --out "$dir" 2>&1) && { echo "started over"; return 1; }
  expect_error_line "$out" "--out $dir holds the unfinished training of a job (its training state), which a save there would lose: continue it with mto train --resume" ||
    return 1
  out=$("$mto" train --init "$dir" --train-samples 64 --out "$dir" 2>&1) && { echo "started over in place"; return 1; }
  expect_error_line "$out" "--out $dir holds the unfinished training of a job" || return 1
  # Nor does another command's save replace it.
  out=$("$mto" optimize "$dir" --mode quantize:int8 --calib-samples 8 --out "$dir" 2>&1) &&
    { echo "optimize replaced an unfinished job"; return 1; }
  expect_error_line "$out" "--out $dir holds the unfinished training of a job" || return 1
  # The GPT carries its seed in its model_args too: both are named, --seed among them.
  out=$(ranks 2 "$mto" train --model gpt --model-args "$gpt_args" --train-samples 1024 --batch-size 8 --epochs 2 \
        --save-every 8 --seed 7 --out "$dir" --resume 2>&1) && { echo "resumed with another seed"; return 1; }
  grep -q "^mto: error: --resume: $dir was saved by a job with model_args = {.*\"seed\":0.*}, seed = 0, but this job" \
    <<<"$out" && grep -q "seed = 7; resume with the options of the job that saved it\$" <<<"$out" || { echo "$out"; return 1; }
}

resume_without_checkpoint_starts_at_zero() {
  out=$("$mto" train --model gpt --model-args '{"width": 16, "depth": 1, "heads": 2, "context": 8}' \
        --train-samples 32 --batch-size 8 --epochs 1 --save-every 2 --out "$work/fresh" --resume 2>&1) ||
    { echo "$out"; return 1; }
  grep -q "^no checkpoint at $work/fresh yet: starting from step 0" <<<"$out" || { echo "$out"; return 1; }
  grep -q "^1 training checkpoint(s) saved in the background" <<<"$out" || { echo "$out"; return 1; }
  # An empty directory holds no checkpoint either.
  mkdir "$work/empty"
  out=$("$mto" train --model gpt --model-args '{"width": 16, "depth": 1, "heads": 2, "context": 8}' \
        --train-samples 16 --batch-size 8 --epochs 1 --out "$work/empty" --resume 2>&1) || { echo "$out"; return 1; }
  grep -q "^no checkpoint at $work/empty yet: starting from step 0" <<<"$out" || { echo "$out"; return 1; }
  "$mto" train --help | grep -q -- "--save-every" && "$mto" train --help | grep -q -- "--resume"
}

# A diverged job stops on every rank instead of saving weights that are no longer numbers;
# its last training checkpoint stays. A context longer than the corpus is refused.
diverged_training_stops() {
  out=$(ranks 2 "$mto" train --model gpt --model-args '{"width": 16, "depth": 1, "heads": 2, "context": 8}' \
        --train-samples 64 --batch-size 8 --epochs 2 --lr 1e30 --out "$work/diverged" 2>&1) &&
    { echo "a diverged job succeeded"; return 1; }
  expect_error_line "$out" "training diverged: the loss is [a-z]* by step [0-9]*, so the weights are no longer numbers" ||
    return 1
  [ ! -e "$work/diverged" ] || { echo "a diverged job saved $work/diverged"; return 1; }
  out=$("$mto" train --model gpt --model-args '{"width": 2, "depth": 1, "heads": 1, "context": 10000000}' \
        --train-samples 2 --out "$work/long" 2>&1) && { echo "trained on no sequence"; return 1; }
  expect_error_line "$out" "the model's context of 10000000 bytes is longer than the text corpus's training text"
}

check killed_and_resumed_dp2 killed_and_resumed_dp2
check killed_and_resumed_tp2 killed_and_resumed_tp2
check training_checkpoint_evaluates_and_refuses_other_options training_checkpoint_evaluates_and_refuses_other_options
check resume_without_checkpoint_starts_at_zero resume_without_checkpoint_starts_at_zero
check diverged_training_stops diverged_training_stops

finish
