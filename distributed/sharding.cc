#include "distributed/sharding.h"

#include <algorithm>
#include <numeric>
#include <queue>
#include <stdexcept>
#include <utility>

namespace mto {

Range split_range(int64_t count, int rank, int world_size) {
  if (world_size <= 0 || rank < 0 || rank >= world_size || count < 0) {
    throw std::invalid_argument("split_range: need 0 <= rank < world_size and count >= 0");
  }
  const int64_t base = count / world_size;
  const int64_t extra = count % world_size;
  Range r;
  r.begin = rank * base + std::min<int64_t>(rank, extra);
  r.end = r.begin + base + (rank < extra ? 1 : 0);
  return r;
}

std::vector<int> split_by_weight(const std::vector<uint64_t>& weights, int world_size) {
  if (world_size <= 0) throw std::invalid_argument("split_by_weight: world_size must be positive");
  std::vector<size_t> order(weights.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return weights[a] > weights[b]; });
  // (load, rank), lightest first, lower rank first among equals.
  using Load = std::pair<uint64_t, int>;
  std::priority_queue<Load, std::vector<Load>, std::greater<Load>> ranks;
  for (int r = 0; r < world_size; ++r) ranks.emplace(0, r);
  std::vector<int> owner(weights.size());
  for (size_t item : order) {
    auto [load, rank] = ranks.top();
    ranks.pop();
    owner[item] = rank;
    ranks.emplace(load + weights[item], rank);
  }
  return owner;
}

}  // namespace mto
