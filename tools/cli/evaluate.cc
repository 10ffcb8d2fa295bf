#include "tools/cli/evaluate.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>

#include "distributed/sharding.h"

#include "tools/cli/progress.h"
#include "tools/zoo/forward.h"

namespace mto {
namespace cli {

Evaluation evaluate(torch::nn::Module& model, const data::Dataset& dataset,
                    Communicator& communicator, int64_t batch_size, bool show_progress) {
  const data::Dataset mine = data::shard(dataset, communicator.rank(), communicator.world_size());
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  // Sums over this rank's share: correct predictions, loss, examples.
  at::Tensor sums = at::zeros({3}, at::kDouble);
  Progress progress("eval", mine.size(), "images", show_progress);
  for (int64_t begin = 0; begin < mine.size(); begin += batch_size) {
    const int64_t count = std::min(batch_size, mine.size() - begin);
    const at::Tensor logits = zoo::forward(model, mine.images.narrow(0, begin, count));
    const at::Tensor labels = mine.labels.narrow(0, begin, count);
    sums[0] += logits.argmax(1).eq(labels).sum().item<int64_t>();
    sums[1] += at::cross_entropy_loss(logits, labels, {}, at::Reduction::Sum).item<double>();
    sums[2] += count;
    progress.update(begin + count);
  }
  model.train(was_training);
  communicator.all_reduce(sums, ReduceOp::kSum);
  Evaluation out;
  out.samples = static_cast<int64_t>(sums[2].item<double>());
  if (out.samples > 0) {
    out.accuracy = sums[0].item<double>() / out.samples;
    out.loss = sums[1].item<double>() / out.samples;
  }
  return out;
}

at::Tensor language_model_loss(torch::nn::Module& model, const at::Tensor& windows) {
  const int64_t length = windows.size(1) - 1;
  const at::Tensor tokens = windows.to(at::kLong);
  const at::Tensor logits = zoo::forward(model, tokens.narrow(1, 0, length));
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), tokens.narrow(1, 1, length).reshape({-1}));
}

LanguageModelEvaluation evaluate_language_model(torch::nn::Module& model, const at::Tensor& windows,
                                                Communicator& communicator, int64_t batch_size,
                                                bool show_progress) {
  const Range range = split_range(windows.size(0), communicator.rank(), communicator.world_size());
  const int64_t length = windows.size(1) - 1;
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  // Sums over this rank's share: loss * tokens, tokens.
  at::Tensor sums = at::zeros({2}, at::kDouble);
  Progress progress("eval", range.size() * length, "tokens", show_progress);
  for (int64_t begin = 0; begin < range.size(); begin += batch_size) {
    const int64_t count = std::min(batch_size, range.size() - begin);
    const at::Tensor batch = windows.narrow(0, range.begin + begin, count);
    sums[0] += language_model_loss(model, batch).item<double>() * count * length;
    sums[1] += count * length;
    progress.update((begin + count) * length);
  }
  model.train(was_training);
  communicator.all_reduce(sums, ReduceOp::kSum);
  LanguageModelEvaluation out;
  out.tokens = static_cast<int64_t>(sums[1].item<double>());
  if (out.tokens > 0) {
    out.loss = sums[0].item<double>() / out.tokens;
    out.perplexity = std::exp(out.loss);
    out.bits_per_byte = out.loss / std::log(2.0);
  }
  return out;
}

}  // namespace cli
}  // namespace mto
