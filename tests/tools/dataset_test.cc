// Splitting a data set over ranks.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <stdexcept>

#include "tools/data/dataset.h"

namespace mto {
namespace data {
namespace {

TEST(DatasetTest, ShardsAreContiguousViewsThatCoverTheDataOnce) {
  const Dataset dataset{at::arange(10, at::kFloat).view({10, 1, 1, 1}), at::arange(10, at::kLong)};
  std::vector<int64_t> sizes;
  int64_t next = 0;
  for (int rank = 0; rank < 4; ++rank) {
    const Dataset part = shard(dataset, rank, 4);
    sizes.push_back(part.size());
    EXPECT_TRUE(part.labels.equal(at::arange(next, next + part.size(), at::kLong)));
    EXPECT_EQ(part.images.data_ptr<float>(), dataset.images.data_ptr<float>() + next);
    next += part.size();
  }
  EXPECT_EQ(sizes, (std::vector<int64_t>{3, 3, 2, 2}));
  EXPECT_EQ(shard(dataset, 0, 1).size(), 10);
}

TEST(DatasetTest, RejectsARankOutsideTheWorld) {
  const Dataset dataset{at::zeros({2, 1, 1, 1}), at::zeros({2}, at::kLong)};
  EXPECT_THROW(shard(dataset, 2, 2), std::invalid_argument);
  EXPECT_THROW(shard(dataset, -1, 2), std::invalid_argument);
  EXPECT_THROW(shard(dataset, 0, 0), std::invalid_argument);
}

}  // namespace
}  // namespace data
}  // namespace mto
