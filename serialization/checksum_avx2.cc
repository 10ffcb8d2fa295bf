// Built with -mavx2: xxHash's inline implementation then uses its AVX2 accumulator.
#include "serialization/checksum_avx2.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace mto {
namespace avx2 {

uint64_t xxh3_64(const void* data, size_t size) { return XXH3_64bits(data, size); }

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

}  // namespace avx2
}  // namespace mto
