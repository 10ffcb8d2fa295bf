#!/usr/bin/env bash
# Checks the NCCL backend on a GPU machine that has neither Bazel nor mto's Debian packages:
# the transport suite (tests/distributed/backend_test) has no LibTorch, so it travels as one
# binary plus its shared libraries, and runs there on that machine's NCCL.
#
#   tools/gpu/nccl_check.sh pack DIR   here: builds the suite and copies it, with every shared
#                                      library it needs but the C library and NCCL, into DIR
#   tools/gpu/nccl_check.sh run DIR    on the GPU machine: finds NCCL (the system's, or the one
#                                      in Python's nvidia-nccl package) and runs the suite on it
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -eq 2 ] || usage
dir=$(realpath -m "$2")

case $1 in
  pack)
    cd "$(dirname "$0")/../.."
    bazel build //tests/distributed:backend_test
    # Not bazel-bin: that link follows whichever configuration was built last.
    binary="$(bazel info bazel-bin 2>/dev/null)/tests/distributed/backend_test"
    mkdir -p "$dir/lib"
    cp -L "$binary" "$dir/"
    ldd "$binary" | awk '$3 ~ /^\// { print $3 }' |
      grep -Ev '/(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|libnccl)\.so' |
      xargs -I{} cp -L {} "$dir/lib/"
    echo "packed $(ls "$dir/lib" | wc -l) libraries, $(du -sh "$dir" | cut -f1), into $dir"
    ;;
  run)
    nccl=$(ldconfig -p | awk '/libnccl\.so\.2 / { print $NF; exit }')
    if [ -z "$nccl" ]; then
      nccl=$(python3 -c 'import nvidia.nccl as m, os; print(os.path.join(list(m.__path__)[0], "lib", "libnccl.so.2"))')
    fi
    [ -f "$nccl" ] || { echo "nccl_check: no libnccl.so.2 on this machine" >&2; exit 1; }
    echo "NCCL: $nccl"
    nvidia-smi -L
    export LD_LIBRARY_PATH="$dir/lib:$(dirname "$nccl")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if ldd "$dir/backend_test" | grep 'not found'; then exit 1; fi
    MTO_BACKEND=nccl NCCL_DEBUG=VERSION timeout 600 "$dir/backend_test"
    ;;
  *) usage ;;
esac
