#pragma once

#include <memory>

#include "distributed/backend.h"

namespace mto {

// Collectives over Open MPI, on CPU memory. Each collective is started non-blocking and
// polled until it completes or its timeout passes, so that a dead or stuck peer turns into a
// DistributedError instead of a hang. MPI errors are returned, not fatal, and reported the
// same way. After a timeout or an error the backend is broken and refuses further work.
class MpiBackend : public Backend {
 public:
  // The backend over MPI_COMM_WORLD. MPI must be initialized (see world.h).
  static std::unique_ptr<MpiBackend> world();
  ~MpiBackend() override;

  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  std::string name() const override { return "mpi"; }
  void all_reduce(void* data, size_t count, DataType type, ReduceOp op,
                  std::chrono::milliseconds timeout) override;
  void broadcast(void* data, size_t bytes, int root, std::chrono::milliseconds timeout) override;
  void all_gather(const void* in, void* out, size_t bytes,
                  std::chrono::milliseconds timeout) override;
  // By point-to-point messages: ranks that exchange nothing return at once.
  void all_to_all(const std::vector<SendBuffer>& send, const std::vector<ReceiveBuffer>& receive,
                  std::chrono::milliseconds timeout) override;
  void barrier(std::chrono::milliseconds timeout) override;
  // A barrier within `timeout`, then MPI_Comm_split (which has no timeout of its own).
  std::unique_ptr<Backend> split(int color, int key, std::chrono::milliseconds timeout) override;

  bool broken() const override { return !broken_reason_.empty(); }

 private:
  struct Comm;
  explicit MpiBackend(std::unique_ptr<Comm> comm);
  // Throws if the backend is broken.
  void check_usable(const char* op) const;
  // Polls the `count` requests at `requests` until all complete; throws DistributedError on
  // error or at `deadline`.
  void wait(void* requests, int count, const char* op, const std::string& what,
            std::chrono::milliseconds timeout, std::chrono::steady_clock::time_point deadline);
  // Marks the backend broken for `reason` (and notes it for any_broken).
  void set_broken(std::string reason);
  // Marks the backend broken and throws for a collective that MPI refused to start.
  [[noreturn]] void start_failed(const char* op, const std::string& what, int rc);

  std::unique_ptr<Comm> comm_;
  int rank_ = 0;
  int size_ = 1;
  // "rank 1 of 2", and "(world rank 3 of 4)" for a sub-group: what its errors name.
  std::string where_;
  std::string broken_reason_;
};

}  // namespace mto
