// Quantization benchmark on the ranks this is launched with:
//  - forward time of the fake-quantized CNN (int8, fp8, int4_blockwise) against the plain
//    forward of the same model, measured in the same run on rank 0 (ratios);
//  - calibration wall time over --calib-samples Fashion-MNIST images split over the ranks,
//    and the collectives and bytes of its amax sync.
//
//   mpirun -np 4 --oversubscribe quantize_bench [--checkpoint DIR] [--calib-samples 2048]
//   (tools/bench/quantize_bench.sh runs 1, 2 and 4 ranks)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "distributed/world.h"
#include "modes/quantization/quantize.h"
#include "opt/checkpoint.h"
#include "opt/model_like.h"
#include "tools/common/heap.h"
#include "tools/data/fashion_mnist.h"
#include "tools/zoo/forward.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The model to measure: a checkpoint's model, or a fresh zoo CNN.
mto::ModulePtr load_model(const std::string& checkpoint) {
  auto alone = mto::world()->split(mto::world()->rank(), 0);
  if (!checkpoint.empty()) return mto::restore(checkpoint, {alone});
  at::manual_seed(0);
  return mto::ModelLike("fashion_cnn").build();
}

// The median time of `repeat` runs of the forward over every batch of `images`.
double forward_seconds(torch::nn::Module& model, const at::Tensor& images, int64_t batch, int repeat) {
  torch::NoGradGuard no_grad;
  model.eval();
  std::vector<double> times;
  for (int r = 0; r <= repeat; ++r) {
    const auto start = Clock::now();
    for (int64_t begin = 0; begin < images.size(0); begin += batch) {
      mto::zoo::forward(model, images.narrow(0, begin, std::min(batch, images.size(0) - begin)));
    }
    if (r > 0) times.push_back(seconds_since(start));  // the first run warms up
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Fake-quantized forward time and sharded calibration of the Fashion-MNIST CNN"};
  std::string checkpoint;
  int64_t calib_samples = 2048;
  int64_t eval_samples = 2000;
  int64_t batch = 64;
  int repeat = 5;
  app.add_option("--checkpoint", checkpoint, "A float checkpoint of a zoo model (default: a fresh fashion_cnn)");
  app.add_option("--calib-samples", calib_samples, "Calibration images, split over the ranks")->capture_default_str();
  app.add_option("--eval-samples", eval_samples, "Test images per forward-time run (rank 0)")->capture_default_str();
  app.add_option("--batch", batch, "Batch size")->capture_default_str();
  app.add_option("--repeat", repeat, "Timed runs per measurement (median)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  at::set_num_threads(1);
  mto::tools::keep_freed_memory_in_heap();

  auto comm = mto::world();
  const bool rank0 = comm->rank() == 0;
  const mto::data::Dataset calibration = mto::data::shard(
      mto::data::load_fashion_mnist(mto::data::Split::kTrain, mto::data::default_fashion_mnist_root(), calib_samples),
      comm->rank(), comm->world_size());
  const at::Tensor test =
      mto::data::load_fashion_mnist(mto::data::Split::kTest, mto::data::default_fashion_mnist_root(), eval_samples)
          .images;
  mto::quantization::ForwardLoop loop = [&](torch::nn::Module& m) {
    for (int64_t begin = 0; begin < calibration.size(); begin += batch) {
      mto::zoo::forward(m, calibration.images.narrow(0, begin, std::min(batch, calibration.size() - begin)));
    }
  };

  double plain = 0;
  if (rank0) {
    mto::ModulePtr model = load_model(checkpoint);
    plain = forward_seconds(*model, test, batch, repeat);
    std::printf("%d rank(s); forward of %lld images, batch %lld, 1 thread, median of %d\n", comm->world_size(),
                static_cast<long long>(test.size(0)), static_cast<long long>(batch), repeat);
    std::printf("%-16s %10s %10s %8s | %12s %12s %12s\n", "format", "forward", "images/s", "ratio", "calibration",
                "collectives", "sync bytes");
    std::printf("%-16s %9.3fs %10.0f %7.2fx | %12s %12s %12s\n", "float", plain, test.size(0) / plain, 1.0, "-", "-",
                "-");
  } else {
    load_model(checkpoint);  // the split inside is collective
  }
  for (const std::string format : {"int8", "fp8", "int4_blockwise"}) {
    mto::ModulePtr model = load_model(checkpoint);
    comm->barrier();
    comm->reset_stats();
    const auto start = Clock::now();
    model = mto::quantization::quantize(model, format, loop, comm);
    const double calibrate = seconds_since(start);
    const mto::CommunicatorStats stats = comm->stats();
    if (!rank0) continue;
    const double quantized = forward_seconds(*model, test, batch, repeat);
    std::printf("%-16s %9.3fs %10.0f %7.2fx | %11.3fs %12llu %12llu\n", format.c_str(), quantized,
                test.size(0) / quantized, quantized / plain, calibrate,
                static_cast<unsigned long long>(stats.collectives), static_cast<unsigned long long>(stats.bytes));
  }
  return 0;
}
