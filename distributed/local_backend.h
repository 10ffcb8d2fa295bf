#pragma once

#include "distributed/backend.h"

namespace mto {

// The backend of a world of one: a program started without mpirun. Every collective is
// immediate (all_gather and all_to_all copy their input).
class LocalBackend : public Backend {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string name() const override { return "local"; }
  void all_reduce(void*, size_t, DataType, ReduceOp, std::chrono::milliseconds) override {}
  void broadcast(void*, size_t, int root, std::chrono::milliseconds) override;
  void all_gather(const void* in, void* out, size_t bytes, std::chrono::milliseconds) override;
  void all_to_all(const std::vector<SendBuffer>& send, const std::vector<ReceiveBuffer>& receive,
                  std::chrono::milliseconds) override;
  void barrier(std::chrono::milliseconds) override {}
  std::unique_ptr<Backend> split(int color, int key, std::chrono::milliseconds) override;
};

}  // namespace mto
