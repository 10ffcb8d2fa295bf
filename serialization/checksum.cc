#include "serialization/checksum.h"

#include <xxhash.h>

#include <new>

#include "serialization/checksum_avx2.h"

namespace mto {
namespace {

// Whether to use the AVX2 build (where the CPU has it) rather than the system library's; both
// give the same digests. Decided on first use, so that static initializers may hash too.
bool use_avx2() {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2;
}

}  // namespace

struct Xxh3Stream::State {
  bool avx2 = use_avx2();
  XXH3_state_t* xxh = nullptr;
  void* xxh_avx2 = nullptr;
  ~State() {
    if (xxh != nullptr) XXH3_freeState(xxh);
    if (xxh_avx2 != nullptr) avx2::destroy_state(xxh_avx2);
  }
};

uint64_t xxh3_64(const void* data, size_t size) {
  return use_avx2() ? avx2::xxh3_64(data, size) : XXH3_64bits(data, size);
}

Xxh3Stream::Xxh3Stream() : state_(std::make_unique<State>()) {
  if (state_->avx2) {
    state_->xxh_avx2 = avx2::create_state();
    if (state_->xxh_avx2 == nullptr) throw std::bad_alloc();
    return;
  }
  state_->xxh = XXH3_createState();
  if (state_->xxh == nullptr || XXH3_64bits_reset(state_->xxh) != XXH_OK) {
    throw std::bad_alloc();
  }
}

Xxh3Stream::~Xxh3Stream() = default;

void Xxh3Stream::update(const void* data, size_t size) {
  if (state_->avx2) {
    avx2::update(state_->xxh_avx2, data, size);
  } else {
    XXH3_64bits_update(state_->xxh, data, size);
  }
}

uint64_t Xxh3Stream::digest() const {
  return state_->avx2 ? avx2::digest(state_->xxh_avx2) : XXH3_64bits_digest(state_->xxh);
}

}  // namespace mto
