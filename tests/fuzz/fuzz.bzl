"""fuzz_test: a libFuzzer target built with clang-14 and sanitizers, run briefly as a test.

The fuzz binary is built in the configuration of //third_party/toolchains/clang_fuzz (the
same one --config=fuzz selects) through a transition, so a plain `bazel test //...` builds
and runs it next to the other tests without reconfiguring anything else.
"""

_FUZZ_TOOLCHAIN = "//third_party/toolchains/clang_fuzz:toolchain"
_LINE_TABLES = "-gline-tables-only"

def _fuzz_transition_impl(settings, attr):
    copts = settings["//command_line_option:copt"]
    return {
        "//command_line_option:crosstool_top": _FUZZ_TOOLCHAIN,
        "//command_line_option:cpu": "k8_fuzz",
        # Line numbers in sanitizer reports, which the build's -g0 would drop (as --config=fuzz).
        "//command_line_option:copt": copts + ([] if _LINE_TABLES in copts else [_LINE_TABLES]),
    }

_fuzz_transition = transition(
    implementation = _fuzz_transition_impl,
    inputs = ["//command_line_option:copt"],
    outputs = [
        "//command_line_option:crosstool_top",
        "//command_line_option:cpu",
        "//command_line_option:copt",
    ],
)

def _fuzz_binary_impl(ctx):
    binary = ctx.attr.binary[0][DefaultInfo].files_to_run.executable
    out = ctx.actions.declare_file(ctx.label.name)
    ctx.actions.symlink(output = out, target_file = binary, is_executable = True)
    return [DefaultInfo(executable = out, files = depset([out]))]

# The cc_binary `binary`, built for fuzzing whatever the configuration of the build.
fuzz_binary = rule(
    implementation = _fuzz_binary_impl,
    attrs = {
        "binary": attr.label(cfg = _fuzz_transition, executable = True, mandatory = True),
        "_whitelist_function_transition": attr.label(
            default = "@bazel_tools//tools/whitelists/function_transition_whitelist",
        ),
    },
    executable = True,
)

def fuzz_test(name, srcs, deps, seconds = 10, in_suite = True):
    """`name`: fuzzes the function of `srcs` (LLVMFuzzerTestOneInput) for `seconds`.

    Seeds come from corpus/`name`/. Builds `name`_bin (the fuzzer, for --config=fuzz),
    `name`_fuzzer (the same, from any configuration) and the test `name`. With
    `in_suite = False` the test `name` is manual (tools/fuzz.sh runs it) and `bazel test //...`
    runs `name`_mutations instead: the same function built with the ordinary compiler, on the
    seeds and random mutations of them (mutation_main.cc), for targets whose clang build would
    compile most of the tree a second time.
    """
    native.cc_binary(
        name = name + "_bin",
        srcs = srcs,
        deps = deps + ["//tests/fuzz:fuzz_input"],
        # libFuzzer supplies main(): the binary links only with the clang_fuzz toolchain.
        tags = ["manual"],
    )
    fuzz_binary(
        name = name + "_fuzzer",
        binary = ":" + name + "_bin",
        tags = ["manual"],
    )
    corpus = native.glob(["corpus/%s/*" % name])
    native.sh_test(
        name = name,
        size = "small",
        srcs = ["run_fuzzer.sh"],
        args = [
            "$(rootpath :%s_fuzzer)" % name,
            "tests/fuzz/corpus/" + name,
            str(seconds),
        ],
        data = [":" + name + "_fuzzer"] + corpus,
        tags = [] if in_suite else ["manual"],
    )
    if not in_suite:
        native.cc_test(
            name = name + "_mutations",
            size = "small",
            srcs = srcs + ["mutation_main.cc"],
            args = ["tests/fuzz/corpus/" + name, str(seconds)],
            data = corpus,
            deps = deps + ["//tests/fuzz:fuzz_input"],
        )
