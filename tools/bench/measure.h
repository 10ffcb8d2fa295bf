#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/module.h>

namespace mto {
namespace bench {

// What the benchmarks measure around the operations they time, and the raw I/O baselines
// they time them against. Not safe to share between threads.

// A value of /proc/self/status in bytes ("VmRSS", "VmHWM"); 0 if absent.
int64_t status_bytes(const std::string& key);

// Starts a new peak-RSS measurement (writing 5 to clear_refs resets VmHWM to VmRSS).
void reset_peak_rss();

// The load averages over 1, 5 and 15 minutes, as /proc/loadavg gives them: the machine may
// be shared, and a busy machine makes every number slower and noisier.
std::string load_average();

// The median of `values` (not empty).
double median(std::vector<double> values);

// A digest of this process's tensors of `model`, in state-dict order, to check that a
// restore brought back what was saved.
uint64_t digest(const torch::nn::Module& model);

// The raw write baseline: writes the bytes of `tensors`, in order, to a new file at `path`
// straight from the tensors' memory, and fsyncs it.
void write_direct(const std::vector<at::Tensor>& tensors, const std::string& path);

// The raw read baseline: reads the file at `path`, from its start, into `destinations` in
// order, one pread per tensor.
void read_into(const std::string& path, const std::vector<at::Tensor>& destinations);

}  // namespace bench
}  // namespace mto
