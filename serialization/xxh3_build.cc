// One build of xxHash's XXH3-64 behind an Xxh3Kernels table. BUILD.bazel compiles this file
// three times: MTO_XXH3_BUILD=library calls the system library; avx512 and avx2 inline xxHash
// here (MTO_XXH3_INLINE) with -mavx512f or -mavx2, and xxHash picks its accumulator from
// those flags.
#ifdef MTO_XXH3_INLINE
#define XXH_INLINE_ALL
#endif
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

const Xxh3Kernels& MTO_XXH3_CONCAT(MTO_XXH3_CONCAT(xxh3_, MTO_XXH3_BUILD), _kernels)() {
  static const Xxh3Kernels kernels{MTO_XXH3_STRING(MTO_XXH3_BUILD), hash, create_state, update, digest,
                                   destroy_state};
  return kernels;
}

}  // namespace mto
