#include "serialization/local_cores.h"

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace mto {

unsigned cores_per_local_rank() {
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const unsigned ranks = local != nullptr ? static_cast<unsigned>(std::max(1, std::atoi(local))) : 1;
  return std::max(1u, std::thread::hardware_concurrency() / ranks);
}

}  // namespace mto
