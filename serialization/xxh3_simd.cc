// xxHash's XXH3-64 inlined here, so that it is compiled with this target's instruction set:
// BUILD.bazel builds this file once with -mavx512f (MTO_XXH3_SIMD=avx512) and once with
// -mavx2 (MTO_XXH3_SIMD=avx2), and xxHash picks its accumulator from those flags.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "serialization/xxh3_kernels.h"

#define MTO_XXH3_CONCAT_(a, b) a##b
#define MTO_XXH3_CONCAT(a, b) MTO_XXH3_CONCAT_(a, b)
#define MTO_XXH3_STRING_(a) #a
#define MTO_XXH3_STRING(a) MTO_XXH3_STRING_(a)

namespace mto {
namespace {

uint64_t hash(const void* data, size_t size) { return XXH3_64bits(data, size); }

void* create_state() {
  XXH3_state_t* state = XXH3_createState();
  if (state != nullptr) XXH3_64bits_reset(state);
  return state;
}

void update(void* state, const void* data, size_t size) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state), data, size);
}

uint64_t digest(const void* state) { return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state)); }

void destroy_state(void* state) { XXH3_freeState(static_cast<XXH3_state_t*>(state)); }

}  // namespace

const Xxh3Kernels& MTO_XXH3_CONCAT(MTO_XXH3_CONCAT(xxh3_, MTO_XXH3_SIMD), _kernels)() {
  static const Xxh3Kernels kernels{MTO_XXH3_STRING(MTO_XXH3_SIMD), hash, create_state, update, digest,
                                   destroy_state};
  return kernels;
}

}  // namespace mto
