"""The copts of a test target whose translation units read test_pch.h precompiled (its deps
must include //tests/testing:test_pch).

Tests of the checkpoint, the modes and the model zoo use it: with clang, 1.4 CPU-seconds
less per file than torch_pch alone (checkpoint_test 9.6 -> 8.2 s, five files 41.5 -> 34.3 s,
one at a time). The small ones that need only tensors (data sets, fake quantization) and the
distributed and reliability tests stay on //third_party/pch:torch_pch: the larger header
saves them nothing (dataset_test 1.8 -> 2.1 s, tensor_parallel_test 4.6 -> 4.5 s).
"""

load("//third_party/pch:pch.bzl", "precompiled_header_copts")

TEST_PCH_COPTS = precompiled_header_copts("//tests/testing:test_pch")
