#pragma once

#include <exception>
#include <string>

namespace mto {
namespace test {

// The message of the exception of type E (any std::exception by default) that `step`
// throws, "no error" if it throws none; an exception of another type goes through.
template <typename E = std::exception, typename F>
std::string error_of(F step) {
  try {
    step();
  } catch (const E& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace test
}  // namespace mto
