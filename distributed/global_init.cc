#include "distributed/global_init.h"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mto {
namespace {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

// splitmix64's output function.
uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Output `index` of the splitmix64 stream whose state starts at `key`; in [0, 1), 53 bits.
double uniform01(uint64_t key, uint64_t index) {
  return static_cast<double>(mix(key + (index + 1) * kGolden) >> 11) * 0x1.0p-53;
}

// Throws std::invalid_argument unless `local` can be `slice` of its global tensor.
void check_fits(const at::Tensor& local, const TensorSlice& slice) {
  const auto& global = slice.global_shape;
  const int64_t dims = static_cast<int64_t>(global.size());
  const bool fits = [&] {
    if (local.dim() != dims || (dims > 0 && (slice.dim < 0 || slice.dim >= dims))) return false;
    for (int64_t d = 0; d < dims; ++d) {
      if (d != slice.dim && local.size(d) != global[d]) return false;
    }
    return dims == 0 || (slice.offset >= 0 && slice.offset + local.size(slice.dim) <= global[slice.dim]);
  }();
  if (!fits) {
    throw std::invalid_argument(absl::StrCat(
        "global init: a tensor of shape ", c10::str(local.sizes()), " is not the slice at offset ",
        slice.offset, " of dimension ", slice.dim, " of a tensor of shape [",
        absl::StrJoin(global, ", "), "]"));
  }
}

// Sets data[local index] = value(global index) for every element of `local` (contiguous,
// `data` its buffer), which is `slice` of its global tensor, viewed as [outer, G, inner]
// (global) and [outer, L, inner] (local).
template <typename T, typename Value>
void fill_elements(const at::Tensor& local, const TensorSlice& slice, T* data, const Value& value) {
  const auto& global = slice.global_shape;
  const int64_t dims = static_cast<int64_t>(global.size());
  int64_t outer = 1, inner = 1, rows = 1, global_rows = 1;
  for (int64_t d = 0; d < dims; ++d) {
    if (d < slice.dim) outer *= global[d];
    if (d > slice.dim) inner *= global[d];
  }
  if (dims > 0) {
    rows = local.size(slice.dim);
    global_rows = global[slice.dim];
  }
  for (int64_t a = 0; a < outer; ++a) {
    for (int64_t b = 0; b < rows; ++b) {
      const uint64_t global_row = static_cast<uint64_t>((a * global_rows + slice.offset + b) * inner);
      const int64_t local_row = (a * rows + b) * inner;
      for (int64_t c = 0; c < inner; ++c) data[local_row + c] = static_cast<T>(value(global_row + c));
    }
  }
}

// Writes `value(global index)` into every element of `local`.
template <typename Value>
void fill_slice(const at::Tensor& local, const TensorSlice& slice, const Value& value) {
  if (!local.device().is_cpu() || (local.scalar_type() != at::kFloat && local.scalar_type() != at::kDouble)) {
    throw std::invalid_argument(absl::StrCat("global init needs a float32 or float64 CPU tensor, not ",
                                             c10::toString(local.scalar_type()), " on ",
                                             local.device().str()));
  }
  check_fits(local, slice);
  // Raw writes into a contiguous buffer: no autograd, no version bump.
  at::Tensor out = local.is_contiguous() ? local : at::empty_like(local, at::MemoryFormat::Contiguous);
  if (out.scalar_type() == at::kFloat) {
    fill_elements(out, slice, out.data_ptr<float>(), value);
  } else {
    fill_elements(out, slice, out.data_ptr<double>(), value);
  }
  if (!out.is_same(local)) {
    at::NoGradGuard no_grad;
    local.copy_(out);
  }
}

}  // namespace

void global_uniform_(const at::Tensor& local, const TensorSlice& slice, uint64_t seed, double low,
                     double high) {
  const uint64_t key = mix(seed);
  fill_slice(local, slice, [&](uint64_t i) { return low + (high - low) * uniform01(key, i); });
}

void global_normal_(const at::Tensor& local, const TensorSlice& slice, uint64_t seed, double mean,
                    double std) {
  const uint64_t radius_key = mix(seed ^ 0x5bd1e995ULL);
  const uint64_t angle_key = mix(seed ^ 0x27d4eb2f165667c5ULL);
  fill_slice(local, slice, [&](uint64_t i) {
    const double u = 1.0 - uniform01(radius_key, i);  // in (0, 1]: log(u) is finite
    return mean + std * std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * M_PI * uniform01(angle_key, i));
  });
}

TensorSlice whole_slice(const at::Tensor& tensor) { return TensorSlice{tensor.sizes().vec(), 0, 0}; }

void global_uniform_(const at::Tensor& whole, uint64_t seed, double low, double high) {
  global_uniform_(whole, whole_slice(whole), seed, low, high);
}

void global_normal_(const at::Tensor& whole, uint64_t seed, double mean, double std) {
  global_normal_(whole, whole_slice(whole), seed, mean, std);
}

uint64_t seed_for(uint64_t base_seed, const std::string& name) {
  uint64_t hash = 0xcbf29ce484222325ULL;  // FNV-1a
  for (unsigned char c : name) hash = (hash ^ c) * 0x100000001b3ULL;
  return mix(mix(base_seed + kGolden) ^ hash);
}

}  // namespace mto
