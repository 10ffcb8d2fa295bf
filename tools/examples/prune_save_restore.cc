// The README's pruning example as a whole program, on as many ranks as mpirun starts (one
// process without mpirun): build the zoo's fashion_cnn, wrap it in mto::DataParallel (every
// rank then holds rank 0's weights) and train it briefly, each rank on its own share of the
// Fashion-MNIST images; then convert it with "fastnas", search the subnet with the best
// validation accuracy within half the parameters (the candidates split over the ranks), cut
// it out with "export_nas", save it as one checkpoint, restore it from the model-like recorded
// there, and check on every rank that the outputs are bit-identical.
//
//   mpirun -np 2 bazel-bin/tools/examples/prune_save_restore CHECKPOINT_DIR [TRAIN_SAMPLES
//       [VALIDATION_SAMPLES [CANDIDATES]]]
//
// TRAIN_SAMPLES (4096 by default) are the first training images, split over the ranks;
// VALIDATION_SAMPLES (1024) the ones after them, scored on every rank; CANDIDATES (32) how many
// subnets the search scores. CHECKPOINT_DIR must be the same path on every rank, and new or an
// mto checkpoint (which the save replaces). The text between the ANCHOR lines is the README's,
// word for word (tests/tools:readme_cpp_examples_test checks it).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/nn/module.h>
#include <torch/optim/adam.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "distributed/data_parallel.h"
#include "distributed/world.h"
#include "modes/nas/search.h"
#include "modes/nas/trace.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/model_like.h"
#include "opt/runtime_context.h"
#include "tools/data/fashion_mnist.h"
#include "tools/zoo/forward.h"

namespace {

// The fraction of `data` that `model` classifies right.
double accuracy(torch::nn::Module& model, const mto::data::Dataset& data) {
  at::NoGradGuard no_grad;
  return mto::zoo::forward(model, data.images).argmax(1).eq(data.labels).to(at::kDouble).mean().item<double>();
}

// One pass over this rank's share `mine` of the training images, in `steps` batches (the same
// number on every rank, so that the gradient all-reduces line up).
void train(mto::DataParallel& model, const mto::data::Dataset& mine, int64_t steps) {
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(3e-3));
  const std::vector<at::Tensor> images = mine.images.tensor_split(steps);
  const std::vector<at::Tensor> labels = mine.labels.tensor_split(steps);
  for (int64_t step = 0; step < steps; ++step) {
    optimizer.zero_grad();
    at::cross_entropy_loss(mto::zoo::forward(*model, images[step]), labels[step]).backward();
    model->average_gradients();  // collective
    optimizer.step();
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 5) {
    std::cerr << "usage: prune_save_restore CHECKPOINT_DIR [TRAIN_SAMPLES [VALIDATION_SAMPLES [CANDIDATES]]]\n";
    return 2;
  }
  try {
    at::set_num_threads(1);  // ranks share the machine's cores
    const std::string dir = argv[1];
    const int64_t train_samples = argc > 2 ? std::stoll(argv[2]) : 4096;
    const int64_t validation_samples = argc > 3 ? std::stoll(argv[3]) : 1024;
    const int64_t candidates = argc > 4 ? std::stoll(argv[4]) : 32;
    if (train_samples < 1 || validation_samples < 1 || candidates < 1) {
      throw std::invalid_argument("the sample counts and CANDIDATES must be positive");
    }

    const std::shared_ptr<mto::Communicator> world = mto::world();
    const mto::data::Dataset images = mto::data::load_fashion_mnist(
        mto::data::Split::kTrain, mto::data::default_fashion_mnist_root(), train_samples + validation_samples);
    if (images.size() != train_samples + validation_samples) {
      throw std::invalid_argument("Fashion-MNIST has " + std::to_string(images.size()) + " training images");
    }
    const mto::data::Dataset training{images.images.narrow(0, 0, train_samples),
                                      images.labels.narrow(0, 0, train_samples)};
    const mto::data::Dataset validation{images.images.narrow(0, train_samples, validation_samples),
                                        images.labels.narrow(0, train_samples, validation_samples)};
    const at::Tensor two_images = validation.images.narrow(0, 0, std::min<int64_t>(2, validation_samples));

    // As in the quantization example: every rank holds rank 0's weights, then trains on its share.
    mto::DataParallel trained(mto::ModelLike("fashion_cnn", {{"hidden", 64}}).build());
    const int64_t steps = std::max<int64_t>(1, train_samples / world->world_size() / 32);
    train(trained, mto::data::shard(training, world->rank(), world->world_size()), steps);
    mto::ModulePtr model = trained->module();
    const double full_accuracy = accuracy(*model, validation);

    // ANCHOR: readme
    // `model`: a trained float model, the same on every rank (see above: mto::DataParallel).
    mto::RuntimeContext context;  // fastnas traces the widths it may shrink from one forward pass
    context.set(mto::nas::kDummyForward, [&](torch::nn::Module& m) { return mto::zoo::forward(m, two_images); });
    model = mto::apply_mode(model, "fastnas", nullptr, std::nullopt, context);
    mto::nas::SearchOptions search;
    search.constraint = mto::nas::Constraint::parse("params=0.5");
    search.num_candidates = candidates;  // 32 by default
    search.score = [&](torch::nn::Module& m) { return accuracy(m, validation); };  // same data on every rank
    mto::nas::SearchResult best = mto::nas::search(model, search);  // candidates split over the ranks
    model = mto::apply_mode(model, "export_nas");  // physically smaller layers
    mto::save(*model, dir);                         // collective, like every step above
    // ANCHOR_END: readme

    // The restored model must give the pruned model's outputs bit for bit.
    const mto::ModulePtr restored = mto::restore(dir);
    at::NoGradGuard no_grad;
    const bool identical =
        mto::zoo::forward(*restored, validation.images).equal(mto::zoo::forward(*model, validation.images));
    at::Tensor identical_ranks = at::tensor({identical ? 1 : 0}, at::kInt);
    world->all_reduce(identical_ranks, mto::ReduceOp::kSum);
    const int count = identical_ranks.item<int>();
    if (world->rank() == 0) {
      std::printf("%d rank(s): trained fashion_cnn on %lld images (validation accuracy %.2f%%), searched %lld "
                  "candidates within params=0.5: %lld of %lld parameters, validation accuracy %.2f%%; saved %s, "
                  "restored it: outputs bit-identical on %d/%d ranks\n",
                  world->world_size(), static_cast<long long>(train_samples), 100 * full_accuracy,
                  static_cast<long long>(best.candidates), static_cast<long long>(best.params),
                  static_cast<long long>(best.full_params), 100 * best.score, dir.c_str(), count, world->world_size());
    }
    return count == world->world_size() ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "prune_save_restore: " << e.what() << "\n";
    return 1;
  }
}
