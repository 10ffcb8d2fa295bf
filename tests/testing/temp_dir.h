#pragma once

#include <stdlib.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace mto {
namespace test {

// A new, empty directory under the test's temporary directory (TEST_TMPDIR under Bazel).
inline std::string make_temp_dir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string templ = std::string(base ? base : "/tmp") + "/mto-test-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed: " + templ);
  return templ;
}

}  // namespace test
}  // namespace mto
