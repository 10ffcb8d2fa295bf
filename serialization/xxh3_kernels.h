#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace mto {

// One build of XXH3-64. Every build gives the same digests; they differ in the vector
// instructions they use, and so in speed (one core of this project's AMD EPYC VM, a 256 KiB
// buffer in cache / 1 GiB from memory: the system library 20 / 18 GB/s, AVX2 50 / 27 GB/s,
// AVX-512 120 / 32 GB/s). Checkpoints hash bytes in cache, in bounce buffers and snapshot
// pieces, so the choice counts there: restoring a 1.5 GiB GPT onto tp 4 took 0.21 / 0.23 s
// with AVX-512 against 0.26 / 0.25 s with AVX2 (two alternated rounds of
// tools/bench/gpt_checkpoint_bench.sh --depth 8 --restore-tp 4, medians of 3); its save,
// bound by the disk, did not change.
struct Xxh3Kernels {
  const char* name;  // "avx512", "avx2" or "library"
  uint64_t (*hash)(const void* data, size_t size);
  // A streaming state: create, update any number of times, digest, destroy.
  void* (*create_state)();
  void (*update)(void* state, const void* data, size_t size);
  uint64_t (*digest)(const void* state);
  void (*destroy_state)(void* state);
};

// The builds this CPU (and its operating system) can run, fastest first. The last is the
// system library's, which runs everywhere.
const std::vector<const Xxh3Kernels*>& xxh3_kernels();

// xxHash compiled with -mavx512f and with -mavx2 (xxh3_build.cc, built once for each). Call
// their functions only where the CPU has those instructions; xxh3_kernels() checks.
const Xxh3Kernels& xxh3_avx512_kernels();
const Xxh3Kernels& xxh3_avx2_kernels();
// The system library's build (SSE2 on x86-64), which runs everywhere.
const Xxh3Kernels& xxh3_library_kernels();

}  // namespace mto
