#include "serialization/checksum.h"

#include <new>

#include "serialization/xxh3_kernels.h"

namespace mto {
namespace {

// The fastest build of XXH3 this CPU runs; all give the same digests.
const Xxh3Kernels& fastest_kernels() {
  static const Xxh3Kernels& fastest = *xxh3_kernels().front();
  return fastest;
}

}  // namespace

struct Xxh3Stream::State {
  const Xxh3Kernels& kernels = fastest_kernels();
  void* xxh = kernels.create_state();
  ~State() {
    if (xxh != nullptr) kernels.destroy_state(xxh);
  }
};

uint64_t xxh3_64(const void* data, size_t size) { return fastest_kernels().hash(data, size); }

Xxh3Stream::Xxh3Stream() : state_(std::make_unique<State>()) {
  if (state_->xxh == nullptr) throw std::bad_alloc();
}

Xxh3Stream::~Xxh3Stream() = default;

void Xxh3Stream::update(const void* data, size_t size) { state_->kernels.update(state_->xxh, data, size); }

uint64_t Xxh3Stream::digest() const { return state_->kernels.digest(state_->xxh); }

}  // namespace mto
