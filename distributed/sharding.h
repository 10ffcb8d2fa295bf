#pragma once

#include <cstdint>
#include <vector>

namespace mto {

// A half-open range of item indices.
struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};

// The contiguous part of `count` items that rank `rank` of `world_size` takes: sizes differ
// by at most one, lower ranks take the extra items. Every rank computes the same split.
Range split_range(int64_t count, int rank, int world_size);

// Assigns every item to one of `world_size` ranks so that the heaviest rank carries as
// little as possible, by `weights` (e.g. bytes): heaviest item first, each to the rank that
// carries least so far (ties go to the lower rank, equal items keep their order).
// Deterministic, so every rank computes the same plan. Returns each item's rank.
std::vector<int> split_by_weight(const std::vector<uint64_t>& weights, int world_size);

}  // namespace mto
