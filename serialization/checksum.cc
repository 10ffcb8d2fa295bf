#include "serialization/checksum.h"

#include <xxhash.h>

#include <new>

namespace mto {

struct Xxh3Stream::State {
  XXH3_state_t* xxh = XXH3_createState();
  ~State() { XXH3_freeState(xxh); }
};

uint64_t xxh3_64(const void* data, size_t size) { return XXH3_64bits(data, size); }

Xxh3Stream::Xxh3Stream() : state_(std::make_unique<State>()) {
  if (state_->xxh == nullptr || XXH3_64bits_reset(state_->xxh) != XXH_OK) {
    throw std::bad_alloc();
  }
}

Xxh3Stream::~Xxh3Stream() = default;

void Xxh3Stream::update(const void* data, size_t size) {
  XXH3_64bits_update(state_->xxh, data, size);
}

uint64_t Xxh3Stream::digest() const { return XXH3_64bits_digest(state_->xxh); }

}  // namespace mto
