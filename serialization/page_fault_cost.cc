#include "serialization/page_fault_cost.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <limits>

namespace mto {
namespace {

// The least cost per page over 8 rounds of 32 fresh pages, so that a round in which the
// process was preempted (a loaded machine) does not count.
double measure() {
  constexpr size_t kRounds = 8;
  constexpr size_t kPagesPerRound = 32;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t length = kRounds * kPagesPerRound * page;
  void* mapped = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) return 0.0;  // No measure: the cheap case, as most machines are.
  ::madvise(mapped, length, MADV_NOHUGEPAGE);
  volatile char* bytes = static_cast<volatile char*>(mapped);
  double least = std::numeric_limits<double>::infinity();
  for (size_t round = 0; round < kRounds; ++round) {
    const auto start = std::chrono::steady_clock::now();
    for (size_t i = 0; i < kPagesPerRound; ++i) bytes[(round * kPagesPerRound + i) * page] = 1;
    const std::chrono::duration<double, std::micro> took = std::chrono::steady_clock::now() - start;
    least = std::min(least, took.count() / kPagesPerRound);
  }
  ::munmap(mapped, length);
  return least;
}

}  // namespace

double page_fault_microseconds() {
  static const double cost = measure();
  return cost;
}

}  // namespace mto
