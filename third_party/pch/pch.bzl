"""cc_precompiled_header: a GCC precompiled header for the translation units of other targets.

The rule copies `hdr` to <name>/<basename> in the output tree and compiles it, with the C++
toolchain's own compile command line (features, --copt, --cxxopt, the include paths of
`deps`), to <name>/<basename>.gch beside the copy. A target that depends on it and adds
precompiled_header_copts(<label>) to its copts force-includes the copy, which GCC then
reads from the .gch instead of parsing the headers again; where the .gch does not fit the
compilation (other flags), GCC parses the copy as a header, so the result is the same.
"""

load("@bazel_tools//tools/cpp:toolchain_utils.bzl", "find_cpp_toolchain")

def _impl(ctx):
    cc_toolchain = find_cpp_toolchain(ctx)
    features = cc_common.configure_features(
        ctx = ctx,
        cc_toolchain = cc_toolchain,
        requested_features = ctx.features,
        unsupported_features = ctx.disabled_features,
    )
    deps = cc_common.merge_cc_infos(cc_infos = [d[CcInfo] for d in ctx.attr.deps])
    context = deps.compilation_context
    header = ctx.actions.declare_file(ctx.label.name + "/" + ctx.file.hdr.basename)
    ctx.actions.symlink(output = header, target_file = ctx.file.hdr)
    compiled = ctx.actions.declare_file(header.basename + ".gch", sibling = header)
    variables = cc_common.create_compile_variables(
        feature_configuration = features,
        cc_toolchain = cc_toolchain,
        user_compile_flags = ctx.fragments.cpp.copts + ctx.fragments.cpp.cxxopts + ["-x", "c++-header"],
        source_file = header.path,
        output_file = compiled.path,
        include_directories = context.includes,
        quote_include_directories = depset(["."], transitive = [context.quote_includes]),
        system_include_directories = context.system_includes,
        preprocessor_defines = context.defines,
        use_pic = True,
    )
    ctx.actions.run(
        executable = cc_common.get_tool_for_action(feature_configuration = features, action_name = "c++-compile"),
        arguments = cc_common.get_memory_inefficient_command_line(
            feature_configuration = features,
            action_name = "c++-compile",
            variables = variables,
        ),
        env = cc_common.get_environment_variables(
            feature_configuration = features,
            action_name = "c++-compile",
            variables = variables,
        ),
        inputs = depset([header], transitive = [context.headers, cc_toolchain.all_files]),
        outputs = [compiled],
        mnemonic = "CppPrecompiledHeader",
        progress_message = "Precompiling %s" % ctx.file.hdr.short_path,
    )
    info = cc_common.merge_cc_infos(cc_infos = [
        CcInfo(compilation_context = cc_common.create_compilation_context(headers = depset([header, compiled]))),
        deps,
    ])
    if not ctx.attr.link_deps:
        info = CcInfo(compilation_context = info.compilation_context)
    return [DefaultInfo(files = depset([header, compiled])), info]

cc_precompiled_header = rule(
    implementation = _impl,
    attrs = {
        "hdr": attr.label(allow_single_file = [".h"], mandatory = True),
        "deps": attr.label_list(providers = [CcInfo]),
        # False: a target that uses the header gets the deps' headers but links only its own
        # deps (so a header may name a library, e.g. one that registers modes, that the
        # target does not link).
        "link_deps": attr.bool(default = True),
        "_cc_toolchain": attr.label(default = Label("@bazel_tools//tools/cpp:current_cc_toolchain")),
    },
    fragments = ["cpp"],
    toolchains = ["@bazel_tools//tools/cpp:toolchain_type"],
    incompatible_use_toolchain_transition = True,
)

def precompiled_header_copts(label):
    """The copts that force-include the precompiled header `label` ("//pkg:name", hdr h.h)."""
    package, name = label[2:].split(":")
    return ["-include", "%s/%s/%s.h" % (package, name, name)]

# The copts of a target whose translation units read LibTorch's headers precompiled (its
# deps must include //third_party/pch:torch_pch).
TORCH_PCH_COPTS = precompiled_header_copts("//third_party/pch:torch_pch")
