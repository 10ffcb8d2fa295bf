// A job in which rank 1 leaves in the middle of the collectives: `exit` ends its process,
// `hang` stops it from answering, `hang_in_group` too, in a collective of a sub-group (as a
// mesh axis is) rather than of the world. Every other rank must fail with a DistributedError
// that names the operation and its rank within the collective timeout
// (MTO_COLLECTIVE_TIMEOUT), and print it; see peer_death_test.sh.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include "distributed/distributed_error.h"
#include "distributed/world.h"

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "exit";
  // In a group of every rank in reverse order, which is a communicator of its own (its errors
  // name the world rank too).
  const auto world = mto::world();
  auto comm = mode == "hang_in_group" ? world->split(0, world->world_size() - 1 - world->rank()) : world;
  at::Tensor t = at::ones({4});
  comm->all_reduce(t, mto::ReduceOp::kSum);  // everyone is alive here
  if (comm->rank() == 1) {
    if (mode == "exit") std::_Exit(3);
    std::this_thread::sleep_for(std::chrono::seconds(120));
    return 0;
  }
  const auto start = std::chrono::steady_clock::now();
  try {
    comm->all_reduce(t, mto::ReduceOp::kSum);
  } catch (const mto::DistributedError& e) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "rank " << comm->rank() << " caught DistributedError after " << seconds << " s: " << e.what()
              << std::endl;
    // The communicator is broken now: further collectives fail at once.
    try {
      comm->barrier();
    } catch (const mto::DistributedError& again) {
      std::cout << "rank " << comm->rank() << " then: " << again.what() << std::endl;
    }
    return 0;
  }
  std::cout << "rank " << comm->rank() << " saw no error" << std::endl;
  return 1;
}
