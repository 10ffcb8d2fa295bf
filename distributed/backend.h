#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mto {

// Element types a backend reduces natively.
enum class DataType { kUInt8, kInt32, kInt64, kFloat32, kFloat64 };

// How all_reduce combines the ranks' values.
enum class ReduceOp { kSum, kMax, kMin };

// Size in bytes of one element of `type`.
size_t data_type_size(DataType type);

// "sum", "max" or "min".
const char* reduce_op_name(ReduceOp op);

// Bytes that all_to_all sends to one peer.
struct SendBuffer {
  const void* data = nullptr;
  size_t bytes = 0;
};

// Room for the bytes that all_to_all receives from one peer.
struct ReceiveBuffer {
  void* data = nullptr;
  size_t bytes = 0;
};

// The transport under a Communicator: collectives on raw host buffers, each bounded by a
// timeout. Implementations: MpiBackend (CPU, Open MPI), NcclBackend (one GPU per rank,
// staging host buffers through device memory) and LocalBackend (a world of one).
//
// Collective: every rank must call each method, in the same order, with the same sizes.
// A backend is used from one thread at a time.
class Backend {
 public:
  virtual ~Backend() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // "mpi", "nccl" or "local".
  virtual std::string name() const = 0;

  // Combines `count` elements at `data` over all ranks, in place.
  virtual void all_reduce(void* data, size_t count, DataType type, ReduceOp op,
                          std::chrono::milliseconds timeout) = 0;
  // Copies `bytes` bytes at `data` from rank `root` to every rank.
  virtual void broadcast(void* data, size_t bytes, int root,
                         std::chrono::milliseconds timeout) = 0;
  // Gathers `bytes` bytes from every rank into `out` (world_size * bytes), rank order.
  virtual void all_gather(const void* in, void* out, size_t bytes,
                          std::chrono::milliseconds timeout) = 0;
  // Sends send[r] to rank r and receives into receive[r] what rank r sends here, for every
  // rank r (both world_size long; zero bytes where there is nothing to move). Sizes agree
  // pairwise: receive[r].bytes here is send[this rank].bytes on rank r. Every rank calls it,
  // but only ranks that exchange bytes wait for each other.
  virtual void all_to_all(const std::vector<SendBuffer>& send, const std::vector<ReceiveBuffer>& receive,
                          std::chrono::milliseconds timeout) = 0;
  // Returns once every rank has entered it.
  virtual void barrier(std::chrono::milliseconds timeout) = 0;

  // Whether a failure or a timeout broke this backend: it refuses further work, and MPI
  // must not be finalized (peers may never answer).
  virtual bool broken() const { return false; }

  // Whether any backend of this process has broken, the world's or a sub-group's (a mesh
  // axis): a collective left in flight may still receive a late peer's data, and its peers
  // may never reach MPI_Finalize, so the process must end the job with MPI_Abort.
  static bool any_broken();
  // Records, for any_broken, that a backend broke (each backend calls it when it does).
  static void note_broken();

  // A backend over the ranks that pass the same `color`, ordered by `key`; nullptr for a
  // rank that passes a negative color. Collective over this backend.
  virtual std::unique_ptr<Backend> split(int color, int key,
                                         std::chrono::milliseconds timeout) = 0;
};

}  // namespace mto
