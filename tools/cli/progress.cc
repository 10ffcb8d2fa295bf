#include "tools/cli/progress.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"

namespace mto {
namespace cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// `amount` of `unit`, readable: a byte count in kB, MB or GB (decimal), anything else as a
// whole number of its unit.
std::string amount_of(double amount, const std::string& unit) {
  if (unit != "bytes") return absl::StrFormat("%.0f %s", amount, unit);
  if (amount < 1e3) return absl::StrFormat("%.0f bytes", amount);
  if (amount < 1e6) return absl::StrFormat("%.1f kB", amount / 1e3);
  if (amount < 1e9) return absl::StrFormat("%.1f MB", amount / 1e6);
  return absl::StrFormat("%.2f GB", amount / 1e9);
}

}  // namespace

double seconds_since(Clock::time_point start) { return seconds_between(start, Clock::now()); }

Progress::Progress(std::string label, int64_t total, std::string unit, bool enabled)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      enabled_(enabled),
      terminal_(isatty(STDERR_FILENO) == 1),
      start_(Clock::now()),
      last_print_(start_) {}

void Progress::skip(int64_t done) {
  skipped_ = done;
  done_ = done;
}

void Progress::update(int64_t done, const std::string& note) {
  done_ = done;
  if (!enabled_) return;
  const auto now = Clock::now();
  const double since_print = seconds_between(last_print_, now);
  if (since_print < (terminal_ ? 0.2 : 5.0)) return;
  last_print_ = now;
  print(done, note, /*final=*/false);
}

void Progress::finish(const std::string& note) {
  if (!enabled_) return;
  print(done_, note, /*final=*/true);
}

void Progress::print(int64_t done, const std::string& note, bool final) {
  const double elapsed = seconds_between(start_, Clock::now());
  const double rate = elapsed > 0 ? (done - skipped_) / elapsed : 0;
  std::string line;
  if (final) {
    line = absl::StrFormat("%s  %s in %.1f s (%s/s)", label_, amount_of(done - skipped_, unit_), elapsed,
                           amount_of(rate, unit_));
    if (skipped_ > 0) line += absl::StrFormat(" after %s before the resume", amount_of(skipped_, unit_));
  } else if (unit_ == "bytes") {
    const double eta = rate > 0 ? (total_ - done) / rate : 0;
    line = absl::StrFormat("%s  %s of %s  %s/s  ETA %.0f s", label_, amount_of(done, unit_), amount_of(total_, unit_),
                           amount_of(rate, unit_), eta);
  } else {
    const double eta = rate > 0 ? (total_ - done) / rate : 0;
    line = absl::StrFormat("%s  %d/%d %s  %.0f %s/s  ETA %.0f s", label_, done, total_, unit_, rate, unit_, eta);
  }
  if (!note.empty()) line += "  " + note;
  if (terminal_) {
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace cli
}  // namespace mto
