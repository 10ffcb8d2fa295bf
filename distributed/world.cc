#include "distributed/world.h"

#include <mpi.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <mutex>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "distributed/distributed_error.h"
#include "distributed/gpu.h"
#include "distributed/local_backend.h"
#include "distributed/mpi_backend.h"
#include "distributed/nccl_backend.h"

namespace mto {
namespace {

std::mutex world_mutex;
// Never destroyed: at exit, finalize_world tears it down in the right order.
std::shared_ptr<Communicator>* world_communicator = nullptr;
// The MPI world that bootstraps NCCL; kept until exit.
std::unique_ptr<MpiBackend>* nccl_bootstrap = nullptr;

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  int out = fallback;
  if (value != nullptr && absl::SimpleAtoi(value, &out)) return out;
  return fallback;
}

// Registered with atexit by init_world when it initialized MPI.
void finalize_world() {
  std::lock_guard<std::mutex> lock(world_mutex);
  // Any communicator, the world's or a mesh axis's (every backend that breaks records it).
  if (!Backend::any_broken()) {
    if (world_communicator != nullptr) world_communicator->reset();
    if (nccl_bootstrap != nullptr) nccl_bootstrap->reset();
    MPI_Finalize();
    return;
  }
  // After a failure, peers may be dead or stalled and never reach finalize, and mpirun may
  // never end a job whose rank was killed by a signal. End the job, non-zero, after a
  // moment in which the other survivors report their own errors.
  std::cout.flush();
  std::cerr.flush();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  MPI_Abort(MPI_COMM_WORLD, 1);
}

std::unique_ptr<Backend> make_nccl_backend(int rank, int size, int device, MpiBackend* bootstrap,
                                           std::chrono::milliseconds timeout) {
  std::string id(0, '\0');
  if (rank == 0) id = NcclBackend::new_unique_id();
  if (bootstrap != nullptr) {
    int64_t length = static_cast<int64_t>(id.size());
    bootstrap->broadcast(&length, sizeof(length), 0, timeout);
    id.resize(static_cast<size_t>(length));
    bootstrap->broadcast(id.data(), id.size(), 0, timeout);
  }
  return NcclBackend::create(id, rank, size, device, timeout);
}

}  // namespace

BackendKind parse_backend_kind(const std::string& name) {
  if (name == "auto") return BackendKind::kAuto;
  if (name == "mpi") return BackendKind::kMpi;
  if (name == "nccl") return BackendKind::kNccl;
  throw DistributedError(absl::StrCat("unknown backend '", name, "' (expected auto, mpi or nccl)"));
}

WorldOptions world_options_from_env() {
  WorldOptions options;
  if (const char* backend = std::getenv("MTO_BACKEND"); backend != nullptr && *backend) {
    options.backend = parse_backend_kind(backend);
  }
  if (const char* timeout = std::getenv("MTO_COLLECTIVE_TIMEOUT"); timeout != nullptr && *timeout) {
    double seconds = 0;
    // Up to a year: beyond, the milliseconds overflow (and nan or inf are no durations).
    if (!absl::SimpleAtod(timeout, &seconds) || !(seconds > 0 && seconds <= 365 * 86400.0)) {
      throw DistributedError(absl::StrCat(
          "MTO_COLLECTIVE_TIMEOUT must be a number of seconds above 0 (up to a year), got '", timeout, "'"));
    }
    options.timeout = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  }
  return options;
}

void call_at_mpi_finalize(void (*callback)()) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return;
  // MPI_Finalize deletes MPI_COMM_SELF's attributes first, calling their delete functions.
  int key = MPI_KEYVAL_INVALID;
  auto at_delete = [](MPI_Comm, int, void*, void* extra) -> int {
    reinterpret_cast<void (*)()>(extra)();
    return MPI_SUCCESS;
  };
  MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, at_delete, &key, reinterpret_cast<void*>(callback));
  MPI_Comm_set_attr(MPI_COMM_SELF, key, nullptr);
}

bool launched_by_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr; }

std::shared_ptr<Communicator> init_world(const WorldOptions& options) {
  std::lock_guard<std::mutex> lock(world_mutex);
  if (world_communicator != nullptr && *world_communicator) return *world_communicator;

  std::unique_ptr<Backend> backend;
  std::string reason;
  const int gpus = visible_gpu_count();
  if (!launched_by_mpirun()) {
    if (options.backend == BackendKind::kNccl) {
      if (gpus == 0) throw DistributedError("backend nccl was asked for, but no GPU is visible");
      backend = make_nccl_backend(0, 1, 0, nullptr, options.timeout);
    } else {
      backend = std::make_unique<LocalBackend>();
    }
  } else {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      std::atexit(finalize_world);
    }
    std::unique_ptr<MpiBackend> mpi = MpiBackend::world();
    const int rank = mpi->rank();
    const int local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    // A rank has a GPU of its own when there are more GPUs than its local rank.
    int32_t own_gpu = local_rank < gpus ? 1 : 0;
    mpi->all_reduce(&own_gpu, 1, DataType::kInt32, ReduceOp::kMin, options.timeout);
    const bool use_nccl = options.backend == BackendKind::kNccl ||
                          (options.backend == BackendKind::kAuto && own_gpu == 1);
    if (use_nccl && own_gpu == 0) {
      throw DistributedError(absl::StrCat("backend nccl was asked for, but not every rank has a GPU of "
                                          "its own (rank ", rank, " sees ", gpus, ")"));
    }
    reason = options.backend != BackendKind::kAuto ? "as asked"
             : use_nccl                            ? "every rank has a GPU of its own"
                                                   : "not every rank has a GPU of its own";
    if (use_nccl) {
      backend = make_nccl_backend(rank, mpi->world_size(), local_rank, mpi.get(), options.timeout);
      nccl_bootstrap = new std::unique_ptr<MpiBackend>(std::move(mpi));
    } else {
      backend = std::move(mpi);
    }
  }
  if (options.announce && launched_by_mpirun() && backend->rank() == 0) {
    std::cerr << "mto: " << backend->world_size() << " rank" << (backend->world_size() == 1 ? "" : "s")
              << ", backend " << backend->name() << " (" << reason << ")\n";
  }
  world_communicator = new std::shared_ptr<Communicator>(
      std::make_shared<Communicator>(std::move(backend), options.timeout));
  return *world_communicator;
}

bool concurrent_communicators() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return true;
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  return level == MPI_THREAD_MULTIPLE;
}

std::shared_ptr<Communicator> world() {
  {
    std::lock_guard<std::mutex> lock(world_mutex);
    if (world_communicator != nullptr && *world_communicator) return *world_communicator;
  }
  return init_world();
}

}  // namespace mto
