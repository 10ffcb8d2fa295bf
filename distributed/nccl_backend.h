#pragma once

#include <memory>
#include <string>

#include "distributed/backend.h"

namespace mto {

// Collectives over NCCL, one GPU per rank. mto's LibTorch is CPU-only, so every collective
// stages the host buffer through device memory: copy in, run the NCCL operation, wait for it
// (polling, bounded by the timeout), copy out. The communicator is created non-blocking and
// aborted on a timeout or an asynchronous NCCL error, which turns into a DistributedError;
// the backend then refuses further work.
class NcclBackend : public Backend {
 public:
  // A new NCCL unique id as bytes. Rank 0 makes it and sends it to every rank.
  static std::string new_unique_id();

  // Joins rank `rank` of `world_size` to the communicator of `unique_id` on GPU `device`.
  // Collective over the ranks that share the id. Throws DistributedError on failure or
  // when the peers do not join within `timeout`.
  static std::unique_ptr<NcclBackend> create(const std::string& unique_id, int rank,
                                             int world_size, int device,
                                             std::chrono::milliseconds timeout);
  ~NcclBackend() override;

  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  std::string name() const override { return "nccl"; }
  void all_reduce(void* data, size_t count, DataType type, ReduceOp op,
                  std::chrono::milliseconds timeout) override;
  void broadcast(void* data, size_t bytes, int root, std::chrono::milliseconds timeout) override;
  void all_gather(const void* in, void* out, size_t bytes,
                  std::chrono::milliseconds timeout) override;
  // Grouped ncclSend / ncclRecv, staged through device memory like the others.
  void all_to_all(const std::vector<SendBuffer>& send, const std::vector<ReceiveBuffer>& receive,
                  std::chrono::milliseconds timeout) override;
  void barrier(std::chrono::milliseconds timeout) override;
  std::unique_ptr<Backend> split(int color, int key, std::chrono::milliseconds timeout) override;
  bool broken() const override;

 private:
  struct State;
  NcclBackend(std::unique_ptr<State> state, int rank, int size);

  std::unique_ptr<State> state_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace mto
