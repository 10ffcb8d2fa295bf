// mto train: data-parallel training of a zoo model on Fashion-MNIST, saved with mto::save.
#include <ATen/ATen.h>
#include <torch/data/samplers/distributed.h>
#include <torch/optim/adam.h>

#include <chrono>
#include <iostream>
#include <memory>

#include "absl/strings/str_format.h"
#include "distributed/data_parallel.h"
#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "opt/errors.h"
#include "opt/model_like.h"
#include "tools/cli/commands.h"
#include "tools/cli/progress.h"
#include "tools/data/fashion_mnist.h"
#include "tools/zoo/forward.h"

namespace mto {
namespace cli {
namespace {

struct TrainOptions {
  std::string model = "fashion_cnn";
  std::string model_args = "{}";
  int epochs = 2;
  int64_t batch_size = 64;
  double lr = 1e-3;
  int64_t train_samples = -1;
  uint64_t seed = 0;
  std::string init;
  std::string out;
};

void run_train(const TrainOptions& options) {
  auto comm = world();
  const bool rank0 = comm->rank() == 0;
  at::manual_seed(options.seed);
  nlohmann::json model_args;
  try {
    model_args = nlohmann::json::parse(options.model_args);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError("--model-args is not valid JSON: " + std::string(e.what()));
  }
  // Every rank builds or restores the model; the wrapper then copies rank 0's weights
  // everywhere. A restored model keeps its modes (masks, quantizers, pruned widths).
  const std::string model_name = options.init.empty() ? options.model : options.init;
  DataParallel model(options.init.empty() ? ModelLike(options.model, model_args).build() : restore(options.init),
                     comm);
  const data::Dataset train = data::load_fashion_mnist(data::Split::kTrain, data::default_fashion_mnist_root(),
                                                       options.train_samples);
  // Each rank draws its own part of every epoch's shuffle; with duplicates allowed, every
  // rank takes the same number of steps, so the gradient all-reduces line up.
  torch::data::samplers::DistributedRandomSampler sampler(train.size(), comm->world_size(), comm->rank(),
                                                          /*allow_duplicates=*/true);
  const int64_t per_rank = (train.size() + comm->world_size() - 1) / comm->world_size();
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(options.lr));
  if (rank0) {
    std::cout << absl::StrFormat("training %s on %d images, %d rank(s), batch %d per rank, %d epoch(s)\n",
                                 model_name, train.size(), comm->world_size(), options.batch_size,
                                 options.epochs)
              << std::flush;
  }
  for (int epoch = 0; epoch < options.epochs; ++epoch) {
    sampler.set_epoch(epoch);
    sampler.reset();
    Progress progress(absl::StrFormat("epoch %d/%d", epoch + 1, options.epochs), per_rank * comm->world_size(),
                      "images", rank0);
    at::Tensor loss_sum = at::zeros({2}, at::kDouble);  // loss * count, count
    int64_t done = 0;
    while (auto indices = sampler.next(options.batch_size)) {
      const at::Tensor index = at::tensor(std::vector<int64_t>(indices->begin(), indices->end()), at::kLong);
      const at::Tensor images = train.images.index_select(0, index);
      const at::Tensor labels = train.labels.index_select(0, index);
      optimizer.zero_grad();
      const at::Tensor loss = at::cross_entropy_loss(zoo::forward(*model, images), labels);
      loss.backward();
      model->average_gradients();
      optimizer.step();
      loss_sum[0] += loss.item<double>() * index.size(0);
      loss_sum[1] += index.size(0);
      done += index.size(0);
      progress.update(done * comm->world_size(),
                      absl::StrFormat("loss %.4f", loss_sum[0].item<double>() / loss_sum[1].item<double>()));
    }
    comm->all_reduce(loss_sum, ReduceOp::kSum);
    progress.finish(absl::StrFormat("loss %.4f", loss_sum[0].item<double>() / loss_sum[1].item<double>()));
  }
  const auto save_start = std::chrono::steady_clock::now();
  save(*model, options.out);
  const double save_seconds = seconds_since(save_start);
  if (rank0) {
    std::cout << absl::StrFormat("saved %s in %.2f s\n", options.out, save_seconds);
  }
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto options = std::make_shared<TrainOptions>();
  CLI::App* command = app.add_subcommand(
      "train", "Train a zoo model on Fashion-MNIST, data-parallel over the mpirun ranks, and save it");
  CLI::Option* model = command->add_option("--model", options->model, "Zoo model: fashion_cnn, fashion_mlp")
                           ->capture_default_str();
  CLI::Option* model_args =
      command->add_option("--model-args", options->model_args, "The model's JSON arguments, e.g. '{\"hidden\": 64}'")
          ->capture_default_str();
  command->add_option("--init", options->init,
                      "Fine-tune this checkpoint (with its modes: sparse, pruned, quantized) instead of a new model")
      ->excludes(model)
      ->excludes(model_args);
  command->add_option("--epochs", options->epochs, "Passes over the training data")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--batch-size", options->batch_size, "Images per step on each rank")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--lr", options->lr, "Adam learning rate")->capture_default_str();
  command->add_option("--train-samples", options->train_samples,
                      "Use only the first N training images (all when negative)")
      ->capture_default_str();
  command->add_option("--seed", options->seed, "Seed of the initial weights and the shuffle")
      ->capture_default_str();
  command->add_option("--out", options->out, "Checkpoint directory to write")->required();
  command->callback([options] { run_train(*options); });
}

}  // namespace cli
}  // namespace mto
