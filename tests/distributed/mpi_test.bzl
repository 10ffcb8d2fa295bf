"""mpi_test: runs a test binary on real mpirun ranks under `bazel test`."""

def mpi_test(name, binary, ranks, args = [], size = "medium", **kwargs):
    """An sh_test that runs `binary` on `ranks` oversubscribed mpirun ranks.

    Args:
      name: the test's name.
      binary: a cc_test or cc_binary label.
      ranks: how many ranks mpirun starts.
      args: more arguments for the binary.
      size: the test size; mpirun start-up makes "medium" the usual choice.
      **kwargs: passed to sh_test (tags, env, ...).
    """
    native.sh_test(
        name = name,
        size = size,
        srcs = ["//tests/distributed:run_mpi.sh"],
        args = [str(ranks), "$(rootpath %s)" % binary] + args,
        data = [binary],
        **kwargs
    )
