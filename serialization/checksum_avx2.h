#pragma once

#include <cstddef>
#include <cstdint>

namespace mto {
namespace avx2 {

// XXH3-64 compiled for AVX2 (about 2x the throughput of the system library's SSE2 build
// here: 24 GB/s against 11 GB/s per core), with the same results. Call only where the CPU
// runs AVX2 (checksum.cc checks, in code not built for AVX2).

uint64_t xxh3_64(const void* data, size_t size);

// A streaming XXH3-64 state: create, update any number of times, digest, destroy.
void* create_state();
void update(void* state, const void* data, size_t size);
uint64_t digest(const void* state);
void destroy_state(void* state);

}  // namespace avx2
}  // namespace mto
