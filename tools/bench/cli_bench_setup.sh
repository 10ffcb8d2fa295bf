# Sourced by the benchmarks that drive the `mto` command line, with a name for their scratch
# directory: builds //tools/cli:mto (its output shown only when the build fails), sets $mto
# to the binary and $dir to a fresh directory under /tmp that is removed when the script
# exits, and gives the ranks one intra-op thread each.
#   source tools/bench/cli_bench_setup.sh NAME
bazel build //tools/cli:mto >/dev/null 2>&1 || bazel build //tools/cli:mto
mto="$(bazel info bazel-bin 2>/dev/null)/tools/cli/mto"
dir=$(mktemp -d "/tmp/mto-$1.XXXXXX")
trap 'rm -rf "$dir"' EXIT
export OMP_NUM_THREADS=1
