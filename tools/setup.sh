#!/usr/bin/env bash
# Installs every Debian package that mto needs to build, test and run its main job.
# Idempotent and safe to rerun; prints nothing unless something fails.
set -euo pipefail

packages=(
  bazel-bootstrap                        # Bazel 4.2.3, used fully offline
  libtorch-dev                           # LibTorch 1.13 (CPU)
  libopenblas0-serial                    # BLAS for LibTorch: 2x the reference BLAS, no threads
  libprotobuf-dev protobuf-compiler      # modelopt state, configs, manifest
  libabsl-dev                            # strings, synchronization
  libgtest-dev libgmock-dev              # tests
  libbenchmark-dev                       # benchmarks
  libopenmpi-dev openmpi-bin             # the MPI backend and mpirun
  libxxhash-dev                          # checksums
  liburing-dev                           # batched reads of a split tensor's row pieces
  nlohmann-json3-dev libcli11-dev        # JSON, the command line
  dataset-fashion-mnist                  # the main job's images
  fortunes                               # the main job's text (2.5 MB of English, BSD licence)
  clang-14                               # the compiler of every target (.bazelrc)
  libfuzzer-14-dev lld-14                # libFuzzer, and the linker of tests/fuzz
  llvm-14                                # llvm-bcanalyzer-14, which reads the .gch in a test
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $sudo apt-get update -qq &&
       DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "tools/setup.sh: installing ${missing[*]} failed (log above)" >&2
  exit 1
fi
