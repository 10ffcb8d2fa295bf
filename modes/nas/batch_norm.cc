#include "modes/nas/batch_norm.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/batchnorm.h>

namespace mto {
namespace nas {
namespace {

template <typename Impl>
std::optional<BatchNorm> as(torch::nn::Module& module) {
  auto* norm = dynamic_cast<Impl*>(&module);
  if (norm == nullptr) return std::nullopt;
  return BatchNorm{norm, &norm->options, &norm->weight, &norm->bias, &norm->running_mean, &norm->running_var};
}

}  // namespace

std::optional<BatchNorm> as_batch_norm(torch::nn::Module& module) {
  if (auto norm = as<torch::nn::BatchNorm1dImpl>(module)) return norm;
  return as<torch::nn::BatchNorm2dImpl>(module);
}

void recalibrate_batch_norms(torch::nn::Module& model,
                             const std::function<void(torch::nn::Module&)>& forward_loop) {
  struct Saved {
    BatchNorm norm;
    c10::optional<double> momentum;
    bool training;
  };
  std::vector<Saved> saved;
  for (const auto& module : model.modules()) {
    std::optional<BatchNorm> norm = as_batch_norm(*module);
    if (!norm || !norm->options->track_running_stats()) continue;
    saved.push_back({*norm, norm->options->momentum(), module->is_training()});
  }
  if (saved.empty()) return;
  at::NoGradGuard no_grad;
  for (Saved& s : saved) {
    s.norm.running_mean->zero_();
    s.norm.running_var->fill_(1);
    // No momentum: the running statistics become the cumulative average over the batches.
    s.norm.options->momentum(c10::nullopt);
    s.norm.module->train(true);
  }
  // num_batches_tracked drives the cumulative average; reset it through the module.
  for (Saved& s : saved) {
    for (auto& buffer : s.norm.module->named_buffers(/*recurse=*/false)) {
      if (buffer.key() == "num_batches_tracked") buffer.value().zero_();
    }
  }
  auto restore = [&saved] {
    for (Saved& s : saved) {
      s.norm.options->momentum(s.momentum);
      s.norm.module->train(s.training);
    }
  };
  try {
    forward_loop(model);
  } catch (...) {
    restore();
    throw;
  }
  restore();
}

}  // namespace nas
}  // namespace mto
