"""cc_precompiled_header: a precompiled header for the translation units of other targets.

The rule copies `hdr` to <name>/<basename> in the output tree and compiles it, with the C++
toolchain's own compile command line (features, --copt, --cxxopt, the include paths of
`deps`), to <name>/<basename>.gch beside the copy. A target that depends on it and adds
precompiled_header_copts(<label>) to its copts force-includes the copy by its path in the
output tree, and the compiler reads the .gch beside it instead of parsing the headers again.
GCC parses the copy as a header where the .gch does not fit the compilation (other flags);
clang stops with an error that names the difference.

With clang (the build's compiler, see .bazelrc) the header is compiled with
-fpch-instantiate-templates: the templates its inline functions use are instantiated once,
into the .gch, instead of again at the end of every translation unit, as GCC does. An empty
file that force-includes torch_pch.h took GCC 6.6 CPU-seconds here, and clang 0.7 s.

The .gch records no modification times (-fno-pch-timestamp): clang would otherwise refuse it
once an input's mtime changes with its content unchanged, as after a fresh clone of the repo
into a workspace whose output base survives, where Bazel, which compares contents, keeps the
.gch. Bazel rebuilds it whenever an input's content changes, and clang still checks sizes.

Clang records the absolute paths of the header's inputs in the .gch and lists them in each
user's dependency file, so the header is compiled outside the sandbox: the paths are then
the execution root's, which Bazel accepts, not those of a sandbox that is gone. For the same
reason a .gch is never taken from a disk or remote cache (no-cache; the local action cache
still keeps it): one built in another workspace names that workspace's files.
"""

load("@bazel_tools//tools/cpp:toolchain_utils.bzl", "find_cpp_toolchain")

# Clang only: the templates instantiated once into the .gch; no input modification times in it.
_CLANG_FLAGS = ["-fpch-instantiate-templates", "-Xclang", "-fno-pch-timestamp"]

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
        user_compile_flags = ctx.fragments.cpp.copts + ctx.fragments.cpp.cxxopts + ["-x", "c++-header"] + (
            _CLANG_FLAGS if cc_toolchain.compiler == "clang" else []
        ),
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
        execution_requirements = {"no-cache": "1", "no-sandbox": "1"},
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
    # By its path in the output tree: clang looks for the .gch beside the path as written,
    # not along the include path as GCC does.
    return ["-include", "$(BINDIR)/%s/%s/%s.h" % (package, name, name)]

# The copts of a target whose translation units read LibTorch's headers precompiled (its
# deps must include //third_party/pch:torch_pch).
TORCH_PCH_COPTS = precompiled_header_copts("//third_party/pch:torch_pch")
