// A program that initializes and finalizes MPI itself, with a save_async in flight when it
// calls MPI_Finalize: the save must finish first (a hook on MPI_COMM_SELF), not crash in
// its collectives. Rank 0 then verifies the checkpoint, with MPI gone, on one process.
#include <mpi.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "distributed/world.h"
#include "opt/model_like.h"
#include "opt/save_async.h"
#include "serialization/checkpoint_reader.h"
#include "tests/opt/testing/test_modes.h"

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  const int rank = mto::world()->rank();
  const std::string dir = std::string(std::getenv("TEST_TMPDIR")) + "/own_mpi";
  {
    const mto::ModulePtr model = mto::ModelLike("test_mlp", {{"seed", 1}, {"hidden", 1024}}).build();
    mto::SaveHandle handle = mto::save_async(*model, dir);
    MPI_Finalize();  // with the save still in flight on every rank
    if (!handle.done()) {
      std::cerr << "rank " << rank << ": the save was still in flight after MPI_Finalize\n";
      return 1;
    }
    handle.wait();
  }
  if (rank == 0) {
    mto::verify_checkpoint(dir);
    std::cout << "verified " << dir << "\n";
  }
  return 0;
}
