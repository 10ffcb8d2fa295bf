// The headers that most test translation units read (LibTorch, GoogleTest, the checkpoint and
// conversion API, the test modes and helpers): precompiled once by //tests/testing:test_pch
// and force-included by the test targets that use it (see test_pch.bzl), which then skip
// parsing them: 1.4 CPU-seconds of each file's compile here. Like torch_pch.h it has no
// include guard (one inclusion per translation unit, and GCC warns about #pragma once in a
// header it precompiles).

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/registry.h"
#include "opt/state_dict.h"
#include "serialization/checkpoint_error.h"
#include "serialization/deterministic.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/testing/errors.h"
#include "tests/testing/model_checks.h"
#include "tests/testing/temp_dir.h"
