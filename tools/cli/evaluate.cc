#include "tools/cli/evaluate.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

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

}  // namespace cli
}  // namespace mto
