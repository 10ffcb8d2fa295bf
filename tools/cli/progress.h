#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace mto {
namespace cli {

// Seconds from `start` to now, for the timings the commands print.
double seconds_since(std::chrono::steady_clock::time_point start);

// Shows the progress of long work: "label  step/total  rate unit/s  ETA  note" (amounts of
// the unit "bytes" in kB, MB or GB: "verify  1.20 GB of 3.22 GB  2.95 GB/s  ETA 1 s"). On a
// terminal it redraws one line; otherwise (logs, CI) it prints a line every few seconds.
// Only an enabled Progress prints: enable it on rank 0 alone.
class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit, bool enabled);

  // Records that `done` of `total` items were finished before this run began (a resumed
  // job): they count toward the total, but not toward the rate, nor in the final line.
  void skip(int64_t done);
  // Records that `done` of `total` items are finished.
  void update(int64_t done, const std::string& note = "");
  // Prints the final line: items, time, rate and `note`.
  void finish(const std::string& note = "");

 private:
  void print(int64_t done, const std::string& note, bool final);

  std::string label_;
  int64_t total_;
  std::string unit_;
  bool enabled_;
  bool terminal_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
  int64_t done_ = 0;
  int64_t skipped_ = 0;
};

}  // namespace cli
}  // namespace mto
