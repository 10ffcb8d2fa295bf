#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "distributed/communicator.h"

namespace mto {

// Which backend the world uses.
enum class BackendKind {
  kAuto,  // NCCL when every rank sees a GPU of its own, MPI otherwise
  kMpi,
  kNccl,
};

// How the process joins its job.
struct WorldOptions {
  // From the environment variable MTO_BACKEND ("auto", "mpi" or "nccl"); auto by default.
  BackendKind backend = BackendKind::kAuto;
  // Default timeout of every collective. From MTO_COLLECTIVE_TIMEOUT (seconds); 600 s by
  // default, long enough for a rank that computes while the others wait.
  std::chrono::milliseconds timeout{600000};
  // Print one line on rank 0 saying which backend was chosen and why.
  bool announce = true;
};

// Parses "auto", "mpi" or "nccl"; throws DistributedError naming the value otherwise.
BackendKind parse_backend_kind(const std::string& name);

// The defaults above, overridden by MTO_BACKEND and MTO_COLLECTIVE_TIMEOUT. Throws
// DistributedError for a malformed value.
WorldOptions world_options_from_env();

// Whether this process was started by mpirun (Open MPI's environment is present).
bool launched_by_mpirun();

// Joins the job once and returns its communicator; later calls return the same one and
// ignore `options`. Under mpirun, initializes MPI (MPI_THREAD_MULTIPLE, so that a
// background save can run collectives of its own), picks the backend (for NCCL: one GPU
// per rank, chosen by the local rank; rank 0 makes the unique id and broadcasts it over
// MPI) and finalizes MPI at exit. Without mpirun the world has one rank (NCCL on GPU 0 if
// asked for). Collective under mpirun: every rank must call it.
std::shared_ptr<Communicator> init_world(const WorldOptions& options = world_options_from_env());

// Whether two threads may run collectives at once, each on its own communicator: true
// unless MPI is initialized with less than MPI_THREAD_MULTIPLE (init_world asks for it).
bool concurrent_communicators();

// Has `callback` run at the start of MPI_Finalize, whoever calls it (mto's exit, or a
// program that initialized MPI itself and finalizes it before returning from main), while
// MPI still works; does nothing where MPI is not initialized.
void call_at_mpi_finalize(void (*callback)());

// The world communicator, joining the job with world_options_from_env() if needed.
std::shared_ptr<Communicator> world();

}  // namespace mto
