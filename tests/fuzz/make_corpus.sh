#!/usr/bin/env bash
# Regenerates the seed corpora under tests/fuzz/corpus/ from real checkpoints: a small
# fashion_mlp trained on one rank and on two (two shards), quantized with the int8, fp8 and
# int4_blockwise presets, written by the `mto` command line. Run from the repository root:
#   tests/fuzz/make_corpus.sh
# The hand-made seeds (configs, regression inputs) are kept; the files taken from
# checkpoints are replaced.
set -euo pipefail
cd "$(dirname "$0")/../.."
bazel build //tools/cli:mto >/dev/null 2>&1
mto=$PWD/bazel-bin/tools/cli/mto
corpus=$PWD/tests/fuzz/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1
ranks() { mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$1" -x OMP_NUM_THREADS "${@:2}"; }

args=(--model fashion_mlp --model-args '{"hidden": [4]}' --epochs 1 --train-samples 256)
"$mto" train "${args[@]}" --out "$work/float1" >/dev/null 2>&1
ranks 2 "$mto" train "${args[@]}" --out "$work/float2" >/dev/null 2>&1
for preset in int8 fp8 int4_blockwise; do
  ranks 2 "$mto" optimize "$work/float2" --mode "quantize:$preset" --calib-samples 128 \
    --out "$work/$preset" >/dev/null 2>&1
done

for d in safetensors_fuzz manifest_fuzz modelopt_state_fuzz index_fuzz config_fuzz quantize_config_fuzz; do
  mkdir -p "$corpus/$d"
  rm -f "$corpus/$d"/ckpt-*
done
for ckpt in float1 float2 int8 fp8 int4_blockwise; do
  for shard in "$work/$ckpt"/*.safetensors; do
    cp "$shard" "$corpus/safetensors_fuzz/ckpt-$ckpt-$(basename "$shard" .safetensors | sed 's/^model-//')"
  done
  cp "$work/$ckpt/MANIFEST" "$corpus/manifest_fuzz/ckpt-$ckpt"
  cp "$work/$ckpt/modelopt_state.pb" "$corpus/modelopt_state_fuzz/ckpt-$ckpt"
  cp "$work/$ckpt/model.safetensors.index.json" "$corpus/index_fuzz/ckpt-$ckpt"
done
# The configs and metadata of the modes, as `mto inspect --json` prints them.
for ckpt in int8 fp8 int4_blockwise; do
  "$mto" inspect --json "$work/$ckpt" | python3 -c '
import json, sys
modes = json.load(sys.stdin)["modes"]
corpus, ckpt = sys.argv[1:]
for m in modes:
    target = "quantize_config_fuzz" if m["mode"] == "quantize" else "config_fuzz"
    name = "ckpt-%s-%s" % (ckpt, m["mode"])
    with open("%s/%s/%s-config" % (corpus, target, name), "w") as f:
        json.dump(m["config"], f)
    with open("%s/config_fuzz/%s-metadata" % (corpus, name), "w") as f:
        json.dump(m["metadata"], f)
' "$corpus" "$ckpt"
done

# Identical files (the quantized checkpoints share the float weights) seed nothing new.
for d in "$corpus"/*/; do
  (cd "$d" && md5sum ckpt-* | sort -k2 | awk 'seen[$1]++ { print $2 }' | xargs -r rm)
done
du -sh "$corpus"
