// Helpers for the fuzz targets: readers that take a path get the fuzzer's input as a file,
// and every error they throw must name that file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

namespace mto {
namespace fuzz {

// A directory for this process's input files, made on first use under $TEST_TMPDIR (or
// /tmp) and reused for every input.
const std::string& input_dir();

// Writes `size` bytes at `data` to input_dir()/`name` (replacing it) and returns its path.
std::string write_input(const std::string& name, const uint8_t* data, size_t size);

// Aborts, so that libFuzzer keeps the input, with `what` and the message of `error`.
[[noreturn]] void fail(const std::string& what, const std::exception& error);

// Aborts with `what` unless `condition` holds.
void check(bool condition, const std::string& what);

// Aborts unless the message of `error` names `name` (a path or a field): a reader's error
// must say what it was reading.
void check_names(const std::exception& error, const std::string& name);

}  // namespace fuzz
}  // namespace mto
