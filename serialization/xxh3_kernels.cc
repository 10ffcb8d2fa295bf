#include "serialization/xxh3_kernels.h"

namespace mto {

const std::vector<const Xxh3Kernels*>& xxh3_kernels() {
  // Decided on first use, so that static initializers may hash too. __builtin_cpu_supports
  // also checks that the operating system saves the vector registers.
  static const std::vector<const Xxh3Kernels*> kernels = [] {
    std::vector<const Xxh3Kernels*> out;
    if (__builtin_cpu_supports("avx512f")) out.push_back(&xxh3_avx512_kernels());
    if (__builtin_cpu_supports("avx2")) out.push_back(&xxh3_avx2_kernels());
    out.push_back(&xxh3_library_kernels());
    return out;
  }();
  return kernels;
}

}  // namespace mto
