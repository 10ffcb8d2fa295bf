#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "distributed/backend.h"

namespace mto {

// Options of one collective.
struct CollectiveOptions {
  // How long to wait for the peers before failing with a DistributedError; zero means the
  // communicator's default timeout.
  std::chrono::milliseconds timeout{0};
};

// How much a communicator has moved: every backend collective counts once.
struct CommunicatorStats {
  uint64_t collectives = 0;
  uint64_t bytes = 0;
};

// The ranks of a job and the collectives between them, on CPU tensors and on byte buffers,
// over a Backend (MPI, NCCL, or a world of one). Modelled on c10d's ProcessGroup.
//
// Collective: every rank must call each collective method, in the same order, with tensors
// of the same dtype and shape. A failure or a timeout throws DistributedError naming the
// operation and the rank. Not safe to use from several threads at once.
class Communicator {
 public:
  Communicator(std::unique_ptr<Backend> backend, std::chrono::milliseconds default_timeout);

  int rank() const { return backend_->rank(); }
  int world_size() const { return backend_->world_size(); }
  // "mpi", "nccl" or "local".
  std::string backend_name() const { return backend_->name(); }
  std::chrono::milliseconds default_timeout() const { return default_timeout_; }
  // Whether a failure or a timeout broke the communicator; every collective then throws.
  bool broken() const { return backend_->broken(); }

  // Combines `tensor` over all ranks with `op`, in place. Any dtype; float16, bfloat16 and
  // small integer types are reduced in a wider type and converted back.
  void all_reduce(const at::Tensor& tensor, ReduceOp op, const CollectiveOptions& options = {});
  // Elementwise on bytes (unsigned), e.g. to agree on flags.
  void all_reduce(std::string& bytes, ReduceOp op, const CollectiveOptions& options = {});

  // Copies `tensor` of rank `root` into `tensor` on every rank.
  void broadcast(const at::Tensor& tensor, int root, const CollectiveOptions& options = {});
  // Copies the bytes of rank `root` to every rank; receivers are resized to fit.
  void broadcast(std::string& bytes, int root, const CollectiveOptions& options = {});

  // Every rank's `tensor`, in rank order.
  std::vector<at::Tensor> all_gather(const at::Tensor& tensor, const CollectiveOptions& options = {});
  // Every rank's bytes, in rank order; the sizes may differ between ranks.
  std::vector<std::string> all_gather(const std::string& bytes, const CollectiveOptions& options = {});

  // Sends send[r] to rank r and receives what rank r sends here into receive[r], for every
  // rank r (both world_size() long; zero bytes where nothing moves): receive[r].bytes must
  // be what rank r sends here. Every rank calls it, in the same order, but only ranks that
  // exchange bytes wait for each other. Counts as one collective of the bytes sent.
  void all_to_all(const std::vector<SendBuffer>& send, const std::vector<ReceiveBuffer>& receive,
                  const CollectiveOptions& options = {});

  // Returns once every rank has called it.
  void barrier(const CollectiveOptions& options = {});

  // A communicator over the ranks that pass the same `color`, ordered by `key`; nullptr on
  // a rank that passes a negative color. Collective.
  std::shared_ptr<Communicator> split(int color, int key, const CollectiveOptions& options = {});

  // What this communicator has moved since it was created or stats were last reset.
  CommunicatorStats stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  std::chrono::milliseconds timeout(const CollectiveOptions& options) const;
  void count(uint64_t bytes);

  std::unique_ptr<Backend> backend_;
  std::chrono::milliseconds default_timeout_;
  CommunicatorStats stats_;
};

}  // namespace mto
