"""The copts of a test target whose translation units read test_pch.h precompiled (its deps
must include //tests/testing:test_pch).

Tests of the checkpoint, the modes and the model zoo use it. The small ones that need only
tensors (data sets, fake quantization) and the distributed and reliability tests stay on
//third_party/pch:torch_pch: GCC instantiates the templates of every header of a precompiled
header again in each translation unit, which cost most of those files up to 3.5 CPU-seconds
more than the parsing it saved them (measured one file at a time).
"""

load("//third_party/pch:pch.bzl", "precompiled_header_copts")

TEST_PCH_COPTS = precompiled_header_copts("//tests/testing:test_pch")
