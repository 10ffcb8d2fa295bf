#include "distributed/local_backend.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "distributed/distributed_error.h"

namespace mto {

void LocalBackend::broadcast(void*, size_t, int root, std::chrono::milliseconds) {
  if (root != 0) throw DistributedError(absl::StrCat("broadcast from rank ", root, " in a world of one"));
}

void LocalBackend::all_gather(const void* in, void* out, size_t bytes, std::chrono::milliseconds) {
  if (bytes > 0 && in != out) std::memmove(out, in, bytes);
}

void LocalBackend::all_to_all(const std::vector<SendBuffer>& send, const std::vector<ReceiveBuffer>& receive,
                              std::chrono::milliseconds) {
  if (send[0].bytes > 0 && send[0].data != receive[0].data) std::memmove(receive[0].data, send[0].data, send[0].bytes);
}

std::unique_ptr<Backend> LocalBackend::split(int color, int, std::chrono::milliseconds) {
  if (color < 0) return nullptr;
  return std::make_unique<LocalBackend>();
}

}  // namespace mto
