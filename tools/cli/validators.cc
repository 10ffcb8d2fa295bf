#include "tools/cli/validators.h"

#include <cmath>
#include <functional>
#include <string>

namespace mto {
namespace cli {
namespace {

// A validator that accepts a finite number for which `accept` holds, and otherwise says
// "must be <wanted>, not '<text>'".
CLI::Validator number_check(const std::string& name, const std::string& wanted,
                            const std::function<bool(double)>& accept) {
  return CLI::Validator(
      [wanted, accept](std::string& text) -> std::string {
        double value = 0;
        if (CLI::detail::lexical_cast(text, value) && std::isfinite(value) && accept(value)) return "";
        return "must be " + wanted + ", not '" + text + "'";
      },
      name);
}

}  // namespace

CLI::Validator positive() {
  return number_check("POSITIVE", "a number above 0", [](double value) { return value > 0; });
}

CLI::Validator non_negative() {
  return number_check("NONNEGATIVE", "a number, 0 or above", [](double value) { return value >= 0; });
}

CLI::Validator sample_count() {
  return number_check("N", "a count above 0 (or negative for all)", [](double value) { return value != 0; });
}

CLI::Validator count_up_to(int64_t most) {
  return number_check("N", "a whole number from 1 to " + std::to_string(most), [most](double value) {
    return value >= 1 && value <= static_cast<double>(most) && value == std::floor(value);
  });
}

CLI::Validator unit_interval() {
  return number_check("[0, 1]", "a number from 0 to 1", [](double value) { return value >= 0 && value <= 1; });
}

}  // namespace cli
}  // namespace mto
