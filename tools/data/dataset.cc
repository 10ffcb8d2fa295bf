#include "tools/data/dataset.h"

#include <stdexcept>
#include <string>

#include <ATen/ATen.h>

#include "distributed/sharding.h"

namespace mto {
namespace data {

Dataset shard(const Dataset& dataset, int rank, int world_size) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    throw std::invalid_argument("shard: rank " + std::to_string(rank) +
                                " is not in a world of size " + std::to_string(world_size));
  }
  const Range range = split_range(dataset.size(), rank, world_size);
  return Dataset{dataset.images.narrow(0, range.begin, range.size()),
                 dataset.labels.narrow(0, range.begin, range.size())};
}

}  // namespace data
}  // namespace mto
