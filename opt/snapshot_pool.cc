#include "opt/snapshot_pool.h"

#include <sys/mman.h>

#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <tuple>
#include <vector>

#include "serialization/checksum.h"
#include "serialization/ordered_work.h"

namespace mto {
namespace {

constexpr size_t kAlignment = 64;
// Bytes one thread copies at a time.
constexpr size_t kPieceBytes = size_t{4} << 20;
// Bytes copied, then hashed, at a time: small enough to stay in the L2 cache between the two.
constexpr size_t kHashedPieceBytes = size_t{256} << 10;

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
  memory_ = static_cast<char*>(p);
  capacity_ = bytes;
}

std::vector<at::Tensor> SnapshotPool::copy(const std::vector<at::Tensor>& tensors, int threads,
                                           std::vector<uint64_t>* digests) {
  size_t total = 0;
  for (const at::Tensor& t : tensors) {
    if (t.defined()) total += aligned(t.nbytes());
  }
  reserve(total);
  // Where each tensor goes.
  std::vector<at::Tensor> sources(tensors.size());
  std::vector<at::Tensor> out(tensors.size());
  size_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!tensors[i].defined()) continue;
    sources[i] = tensors[i].contiguous();
    out[i] = at::from_blob(memory_ + offset, sources[i].sizes(), sources[i].options());
    offset += aligned(sources[i].nbytes());
  }
  if (digests != nullptr) {
    // A tensor's hash runs through its bytes in order: each thread takes whole tensors.
    digests->assign(tensors.size(), 0);
    const size_t workers = threads > 1 ? std::min(static_cast<size_t>(threads), tensors.size()) : 1;
    run_in_order(tensors.size(), static_cast<unsigned>(workers), [&](size_t i) {
      if (!out[i].defined()) return;
      const char* from = static_cast<const char*>(sources[i].data_ptr());
      char* to = static_cast<char*>(out[i].data_ptr());
      const size_t bytes = sources[i].nbytes();
      Xxh3Stream hash;
      for (size_t done = 0; done < bytes; done += kHashedPieceBytes) {
        const size_t n = std::min(kHashedPieceBytes, bytes - done);
        std::memcpy(to + done, from + done, n);
        hash.update(to + done, n);
      }
      (*digests)[i] = hash.digest();
    });
    return out;
  }
  // Unhashed, the bytes are cut into pieces that the threads take in turn.
  std::vector<std::tuple<const char*, char*, size_t>> pieces;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!out[i].defined()) continue;
    const char* from = static_cast<const char*>(sources[i].data_ptr());
    char* to = static_cast<char*>(out[i].data_ptr());
    for (size_t done = 0; done < sources[i].nbytes(); done += kPieceBytes) {
      pieces.emplace_back(from + done, to + done, std::min(kPieceBytes, sources[i].nbytes() - done));
    }
  }
  const size_t workers = threads > 1 ? std::min(static_cast<size_t>(threads), pieces.size()) : 1;
  run_in_order(pieces.size(), static_cast<unsigned>(workers), [&](size_t p) {
    const auto& [from, to, bytes] = pieces[p];
    std::memcpy(to, from, bytes);
  });
  return out;
}

}  // namespace mto
