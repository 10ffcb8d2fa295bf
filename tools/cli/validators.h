#pragma once

#include <cstdint>

#include <CLI/CLI.hpp>

namespace mto {
namespace cli {

// Checks of numeric options whose messages say what is wanted ("--epochs: must be a number
// above 0, not '0'"), where CLI11's PositiveNumber says "Value 0 not in range 0.000000 to
// 1797693134862315708145...".

// A finite number above 0.
CLI::Validator positive();

// A finite number, 0 or above.
CLI::Validator non_negative();

// A count of samples: N above 0 for the first N, or a negative number for all of them.
CLI::Validator sample_count();

// A whole number from 1 to `most`.
CLI::Validator count_up_to(int64_t most);

// A number from 0 to 1 (a weight, a fraction).
CLI::Validator unit_interval();

}  // namespace cli
}  // namespace mto
