#include "serialization/xxh3_kernels.h"

#include <xxhash.h>

namespace mto {
namespace {

// The system library's build (SSE2 on x86-64).
const Xxh3Kernels& library_kernels() {
  static const Xxh3Kernels kernels{
      "library",
      [](const void* data, size_t size) -> uint64_t { return XXH3_64bits(data, size); },
      []() -> void* {
        XXH3_state_t* state = XXH3_createState();
        if (state != nullptr) XXH3_64bits_reset(state);
        return state;
      },
      [](void* state, const void* data, size_t size) {
        XXH3_64bits_update(static_cast<XXH3_state_t*>(state), data, size);
      },
      [](const void* state) -> uint64_t { return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state)); },
      [](void* state) { XXH3_freeState(static_cast<XXH3_state_t*>(state)); },
  };
  return kernels;
}

}  // namespace

const std::vector<const Xxh3Kernels*>& xxh3_kernels() {
  // Decided on first use, so that static initializers may hash too. __builtin_cpu_supports
  // also checks that the operating system saves the vector registers.
  static const std::vector<const Xxh3Kernels*> kernels = [] {
    std::vector<const Xxh3Kernels*> out;
    if (__builtin_cpu_supports("avx512f")) out.push_back(&xxh3_avx512_kernels());
    if (__builtin_cpu_supports("avx2")) out.push_back(&xxh3_avx2_kernels());
    out.push_back(&library_kernels());
    return out;
  }();
  return kernels;
}

}  // namespace mto
