// Splitting work over ranks: contiguous ranges and balancing by weight.
#include <gtest/gtest.h>

#include <algorithm>

#include "distributed/sharding.h"

namespace mto {
namespace {

TEST(SplitRangeTest, CoversEveryItemOnceWithSizesWithinOne) {
  for (int n : {1, 2, 3, 4, 7}) {
    for (int64_t count : {0, 1, 5, 10, 11, 1000}) {
      int64_t next = 0;
      for (int r = 0; r < n; ++r) {
        Range range = split_range(count, r, n);
        EXPECT_EQ(range.begin, next);
        EXPECT_LE(range.size(), count / n + 1);
        EXPECT_GE(range.size(), count / n);
        next = range.end;
      }
      EXPECT_EQ(next, count);
    }
  }
  EXPECT_EQ(split_range(10, 0, 3).size(), 4);
  EXPECT_EQ(split_range(10, 2, 3).size(), 3);
  EXPECT_THROW(split_range(10, 3, 3), std::invalid_argument);
}

TEST(SplitByWeightTest, BalancesBytesAndIsDeterministic) {
  std::vector<uint64_t> weights = {100, 1, 50, 50, 30, 20, 10, 10, 400, 5};
  std::vector<int> owner = split_by_weight(weights, 3);
  std::vector<uint64_t> load(3, 0);
  for (size_t i = 0; i < weights.size(); ++i) load[owner[i]] += weights[i];
  // The 400-byte item alone is the lower bound of the heaviest rank.
  EXPECT_EQ(*std::max_element(load.begin(), load.end()), 400u);
  EXPECT_EQ(owner, split_by_weight(weights, 3));
  EXPECT_EQ(owner[8], 0);  // the heaviest item goes first, to rank 0

  std::vector<uint64_t> equal(8, 10);
  std::vector<int> spread = split_by_weight(equal, 4);
  for (int r = 0; r < 4; ++r) EXPECT_EQ(std::count(spread.begin(), spread.end(), r), 2);
  EXPECT_EQ(split_by_weight(weights, 1), std::vector<int>(weights.size(), 0));
  EXPECT_TRUE(split_by_weight({}, 2).empty());
}

}  // namespace
}  // namespace mto
