#include "opt/snapshot_pool.h"

#include <sys/mman.h>

#include <ATen/ops/from_blob.h>

#include <cerrno>
#include <cstring>
#include <new>

namespace mto {
namespace {

constexpr size_t kAlignment = 64;

size_t aligned(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

}  // namespace

SnapshotPool::~SnapshotPool() {
  if (memory_ != nullptr) ::munmap(memory_, capacity_);
}

void SnapshotPool::reserve(size_t bytes) {
  if (bytes <= capacity_) return;
  if (memory_ != nullptr) ::munmap(memory_, capacity_);
  memory_ = nullptr;
  capacity_ = 0;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  ::madvise(p, bytes, MADV_HUGEPAGE);  // a hint: fewer page faults on the first copy
  memory_ = static_cast<char*>(p);
  capacity_ = bytes;
}

std::vector<at::Tensor> SnapshotPool::copy(const std::vector<at::Tensor>& tensors) {
  size_t total = 0;
  for (const at::Tensor& t : tensors) {
    if (t.defined()) total += aligned(t.nbytes());
  }
  reserve(total);
  std::vector<at::Tensor> out(tensors.size());
  size_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!tensors[i].defined()) continue;
    const at::Tensor source = tensors[i].contiguous();
    std::memcpy(memory_ + offset, source.data_ptr(), source.nbytes());
    out[i] = at::from_blob(memory_ + offset, source.sizes(), source.options());
    offset += aligned(source.nbytes());
  }
  return out;
}

}  // namespace mto
