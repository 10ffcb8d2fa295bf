// mto train: data x tensor parallel training of a zoo model (the Fashion-MNIST classifiers
// on their images, the GPT on the text corpus), saved with mto::save.
#include <ATen/ATen.h>
#include <torch/data/samplers/distributed.h>
#include <torch/optim/adam.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "distributed/data_parallel.h"
#include "distributed/world.h"
#include "modes/distill/distillation_model.h"
#include "opt/checkpoint.h"
#include "opt/collective.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/model_like.h"
#include "opt/state_manager.h"
#include "tools/cli/commands.h"
#include "tools/cli/mesh_option.h"
#include "tools/cli/out_option.h"
#include "tools/cli/progress.h"
#include "tools/cli/training_checkpoint.h"
#include "tools/cli/validators.h"
#include "tools/data/fashion_mnist.h"
#include "tools/data/text_corpus.h"
#include "tools/zoo/forward.h"

namespace mto {
namespace cli {
namespace {

struct TrainOptions {
  std::string model = "fashion_cnn";
  std::string model_args = "{}";
  std::string data = "auto";
  int tp = 1;
  int epochs = 2;
  int64_t batch_size = 64;
  double lr = 1e-3;
  std::string schedule = "cosine";
  int64_t train_samples = -1;
  uint64_t seed = 0;
  std::string init;
  std::string teacher;
  double kd_temperature = 1.0;
  double kd_weight = 0.5;
  std::string out;
  int64_t save_every = 0;
  bool resume = false;
};

// The training examples of one model: how many, what one counts for, and the loss of a
// batch of them.
struct TrainingSet {
  std::string description;  // "60000 images"
  int64_t size = 0;         // examples
  int64_t units = 1;        // units (images, tokens) per example
  std::string unit;
  std::function<at::Tensor(torch::nn::Module&, const at::Tensor& index)> loss;
};

// The loss of a batch: the model's cross entropy against `targets` or, while distilling,
// that loss balanced with the distillation loss against the teacher's logits.
at::Tensor batch_loss(torch::nn::Module& model, const at::Tensor& inputs, const at::Tensor& targets) {
  const bool distilling = distill::find_distillation(model) != nullptr;
  const at::Tensor logits =
      distilling ? distill::distillation_forward(model, zoo::forward, inputs) : zoo::forward(model, inputs);
  const at::Tensor loss = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
  return distilling ? distill::compute_kd_loss(model, loss) : loss;
}

TrainingSet fashion_training_set(const TrainOptions& options) {
  const data::Dataset train = data::load_fashion_mnist(data::Split::kTrain, data::default_fashion_mnist_root(),
                                                       options.train_samples);
  TrainingSet out;
  out.description = absl::StrFormat("%d images", train.size());
  out.size = train.size();
  out.unit = "images";
  out.loss = [train](torch::nn::Module& model, const at::Tensor& index) {
    return batch_loss(model, train.images.index_select(0, index), train.labels.index_select(0, index));
  };
  return out;
}

TrainingSet text_training_set(const TrainOptions& options, int64_t context) {
  const data::TextCorpus corpus = data::load_text_corpus();
  const at::Tensor windows = data::corpus_windows(corpus.train, "training", context, options.train_samples);
  TrainingSet out;
  out.description = absl::StrFormat("%d sequences of %d bytes of the text corpus", windows.size(0), context);
  out.size = windows.size(0);
  out.units = context;
  out.unit = "tokens";
  out.loss = [windows, context](torch::nn::Module& model, const at::Tensor& index) {
    const at::Tensor tokens = windows.index_select(0, index).to(at::kLong);
    return batch_loss(model, tokens.narrow(1, 0, context), tokens.narrow(1, 1, context));
  };
  return out;
}

// Refuses to fine-tune a deployed checkpoint (mode export_quantize): its layers hold
// quantized codes and scales as buffers, which no optimizer step changes, so training would
// move the float biases alone.
void check_trainable(const ModulePtr& model, const std::string& init) {
  if (!ModeloptStateManager::is_converted(*model)) return;
  for (const auto& entry : ModeloptStateManager(model).modes_with_states()) {
    if (entry.mode->name() != "export_quantize") continue;
    throw ConfigError(absl::StrFormat(
        "--init %s is a deployed checkpoint (mode export_quantize): its weights are quantized codes that training "
        "cannot change; fine-tune the checkpoint it was exported from, then export again",
        init));
  }
}

// The student with the mode "kd_loss" applied: the teacher checkpoint restored beside it on
// the same mesh. A plain name is a directory too ("./NAME"), never a model-like, which would
// be an untrained teacher.
ModulePtr with_teacher(ModulePtr student, const TrainOptions& options) {
  const bool plain_name = options.teacher.find('/') == std::string::npos;
  const nlohmann::json config = {
      {"teacher", plain_name ? "./" + options.teacher : options.teacher}, {"temperature", options.kd_temperature}, {"kd_loss_weight", options.kd_weight}};
  return apply_mode(student, ModeList({ModeWithConfig("kd_loss", config.dump())}));
}

// The learning rate of step `step` of `steps`: constant, or falling along a half cosine from
// options.lr to a tenth of it.
double learning_rate(const TrainOptions& options, int64_t step, int64_t steps) {
  if (options.schedule == "constant" || steps <= 1) return options.lr;
  const double progress = static_cast<double>(step) / static_cast<double>(steps - 1);
  return options.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * progress)));
}

void set_learning_rate(torch::optim::Adam& optimizer, double lr) {
  for (torch::optim::OptimizerParamGroup& group : optimizer.param_groups()) {
    static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
  }
}

// The options that decide a job's batches and steps, which a job resuming its training
// checkpoint must share.
nlohmann::json job_of(const TrainOptions& options, const nlohmann::json& model_args, int world_size) {
  return {{"model", options.model},
          {"model_args", model_args},
          {"init", options.init},
          {"teacher", options.teacher},
          {"kd_temperature", options.kd_temperature},
          {"kd_weight", options.kd_weight},
          {"data", options.data},
          {"epochs", options.epochs},
          {"batch_size", options.batch_size},
          {"lr", options.lr},
          {"schedule", options.schedule},
          {"train_samples", options.train_samples},
          {"seed", options.seed},
          {"ranks", world_size},
          {"tp", options.tp}};
}

// "loss 2.3026" for the running sums [loss * examples, examples]; "loss nan", not printf's
// "-nan", once the training has diverged.
std::string loss_text(const at::Tensor& loss_sum) {
  const double loss = loss_sum[0].item<double>() / loss_sum[1].item<double>();
  return std::isnan(loss) ? "loss nan" : absl::StrFormat("loss %.4f", loss);
}

// Throws on every rank if the epoch's loss, summed over the replicas, is not finite: the
// weights have diverged, and saving them would hand on a broken model. The tensor-parallel
// ranks of a replica hold the same loss, so every rank decides alike.
void check_converging(double summed_loss, int64_t step, const TrainOptions& options) {
  if (std::isfinite(summed_loss)) return;
  throw std::runtime_error(absl::StrFormat(
      "training diverged: the loss is %s by step %d, so the weights are no longer numbers; nothing more is saved to "
      "%s (a training checkpoint saved before stays): lower --lr (%g)",
      std::isnan(summed_loss) ? "nan" : "infinite", step, options.out, options.lr));
}

// check_converging of this replica's running loss `loss`, agreed over the replicas in `dp`
// (one collective), before a training checkpoint is saved mid-epoch.
void check_converging(double loss, Communicator& dp, int64_t step, const TrainOptions& options) {
  at::Tensor diverged = at::full({1}, std::isfinite(loss) ? 0.0 : loss, at::kDouble);
  dp.all_reduce(diverged, ReduceOp::kSum);
  check_converging(diverged.item<double>(), step, options);
}

void run_train(const TrainOptions& options) {
  const std::shared_ptr<Mesh> mesh = join_mesh(options.tp);
  // A rerun without --resume after a crash would start over and replace the unfinished
  // job's optimizer state and progress.
  check_out(*mesh->world(), options.out, options.resume);
  const std::shared_ptr<Communicator>& dp = mesh->dp();
  const bool rank0 = mesh->world()->rank() == 0;
  at::manual_seed(options.seed);
  nlohmann::json model_args;
  try {
    model_args = nlohmann::json::parse(options.model_args);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError("--model-args is not valid JSON: " + std::string(e.what()));
  }
  // The GPT initializes its slices from its own seed, so that every mesh builds the same model.
  if (options.model == "gpt" && model_args.is_object() && !model_args.contains("seed")) {
    model_args["seed"] = options.seed;
  }
  // Every rank builds or restores the model (its own slices of a split one); the wrapper then
  // copies each slice from the first replica to the others. A restored model keeps its modes
  // (masks, quantizers, pruned widths).
  const std::string model_name = options.init.empty() ? options.model : options.init;
  const nlohmann::json job = job_of(options, model_args, mesh->world()->world_size());
  std::optional<ResumedTraining> resumed;
  if (options.resume) resumed = resume_training(options.out, job, *mesh->world());
  ModulePtr student = resumed                ? resumed->model
                      : options.init.empty() ? ModelLike(options.model, model_args).build()
                                             : restore(options.init);
  if (!options.init.empty()) check_trainable(student, options.init);
  if (!options.teacher.empty()) {
    student = with_teacher(student, options);
    if (rank0) {
      std::cout << absl::StrFormat("distilling from %s (temperature %g, loss %g x kd + %g x the student's own)\n",
                                   options.teacher, options.kd_temperature, options.kd_weight, 1 - options.kd_weight);
    }
  }
  DataParallel model(student, dp);
  const int64_t context = zoo::language_model_context(*model);
  check_model_splits(*mesh, context > 0, model_name);
  const std::string data = options.data == "auto" ? (context > 0 ? "text" : "fashion") : options.data;
  if ((data == "text") != (context > 0)) {
    throw ConfigError(absl::StrFormat("--data %s does not fit %s, a %s", data, model_name,
                                      context > 0 ? "language model (--data text)" : "classifier (--data fashion)"));
  }
  // Each rank reads its own copy: one missing or unreadable on one node fails every rank.
  const TrainingSet train = make_on_every_rank<TrainingSet>(*mesh->world(), [&] {
    return data == "text" ? text_training_set(options, context) : fashion_training_set(options);
  });

  // Each replica draws its own part of every epoch's shuffle (the ranks of one replica draw
  // the same); with duplicates allowed, every replica takes the same number of steps, so the
  // gradient all-reduces line up.
  torch::data::samplers::DistributedRandomSampler sampler(train.size, dp->world_size(), dp->rank(),
                                                          /*allow_duplicates=*/true);
  const int64_t per_replica = (train.size + dp->world_size() - 1) / dp->world_size();
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(options.lr));
  const int64_t steps = options.epochs * ((per_replica + options.batch_size - 1) / options.batch_size);
  TrainingProgress start;
  if (resumed) {
    load_optimizer_state(*resumed, *student, optimizer);
    start = resumed->progress;
    if (rank0) {
      std::cout << absl::StrFormat("resuming from %s at step %d of %d (epoch %d, batch %d)\n", options.out,
                                   start.step, steps, start.epoch + 1, start.batches)
                << std::flush;
    }
  } else if (options.resume && rank0) {
    std::cout << absl::StrFormat("no checkpoint at %s yet: starting from step 0\n", options.out) << std::flush;
  }
  int64_t step = start.step;
  SaveHandle background;
  int saves = 0;
  double save_blocked = 0;
  if (rank0) {
    std::cout << absl::StrFormat("training %s on %s, %d rank(s) as %s, batch %d per replica, %d epoch(s)\n",
                                 model_name, train.description, mesh->world()->world_size(), mesh->describe(),
                                 options.batch_size, options.epochs)
              << std::flush;
  }
  for (int epoch = start.epoch; epoch < options.epochs; ++epoch) {
    sampler.set_epoch(options.seed * 1000003 + epoch);
    sampler.reset();
    Progress progress(absl::StrFormat("epoch %d/%d", epoch + 1, options.epochs),
                      per_replica * dp->world_size() * train.units, train.unit, rank0);
    at::Tensor loss_sum = at::zeros({2}, at::kDouble);  // loss * examples, examples
    int64_t batches = 0;
    if (resumed && epoch == start.epoch) {
      // The batches the saved job had taken in this epoch are drawn again and skipped.
      for (; batches < start.batches; ++batches) sampler.next(options.batch_size);
      const auto& [sum, examples] = start.losses[mesh->world()->rank()];
      loss_sum[0] = sum;
      loss_sum[1] = examples;
    }
    int64_t done = loss_sum[1].item<int64_t>();
    progress.skip(done * dp->world_size() * train.units);
    while (auto indices = sampler.next(options.batch_size)) {
      const at::Tensor index = at::tensor(std::vector<int64_t>(indices->begin(), indices->end()), at::kLong);
      set_learning_rate(optimizer, learning_rate(options, step++, steps));
      optimizer.zero_grad();
      const at::Tensor loss = train.loss(*model, index);
      loss.backward();
      model->average_gradients();
      optimizer.step();
      loss_sum[0] += loss.item<double>() * index.size(0);
      loss_sum[1] += index.size(0);
      done += index.size(0);
      ++batches;
      if (options.save_every > 0 && step % options.save_every == 0 && step < steps) {
        check_converging(loss_sum[0].item<double>(), *dp, step, options);
        background.wait();  // a failed checkpoint stops the job
        background = save_training_checkpoint(*model, optimizer, {step, epoch, batches, {}},
                                              {loss_sum[0].item<double>(), loss_sum[1].item<double>()}, job,
                                              options.out, *mesh->world());
        save_blocked += background.blocked_seconds();
        ++saves;
      }
      progress.update(done * dp->world_size() * train.units, loss_text(loss_sum));
    }
    dp->all_reduce(loss_sum, ReduceOp::kSum);
    progress.finish(loss_text(loss_sum));
    check_converging(loss_sum[0].item<double>(), step, options);
  }
  background.wait();
  if (saves > 0 && rank0) {
    std::cout << absl::StrFormat("%d training checkpoint(s) saved in the background, training blocked %.2f s\n",
                                 saves, save_blocked);
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
      "train",
      "Train a zoo model (a Fashion-MNIST classifier, or the GPT on the text corpus), data x tensor parallel over "
      "the mpirun ranks, and save it");
  CLI::Option* model =
      command->add_option("--model", options->model, "Zoo model: fashion_cnn, fashion_mlp, gpt")
          ->capture_default_str()
          ->check(CLI::IsMember(model_factory_names()));
  CLI::Option* model_args =
      command
          ->add_option("--model-args", options->model_args,
                       "The model's JSON arguments, e.g. '{\"hidden\": 64}' or "
                       "'{\"width\": 128, \"depth\": 2, \"heads\": 4, \"context\": 64}'")
          ->capture_default_str();
  command->add_option("--init", options->init,
                      "Fine-tune this checkpoint (with its modes: sparse, pruned, quantized) instead of a new model")
      ->excludes(model)
      ->excludes(model_args);
  CLI::Option* teacher =
      command->add_option("--teacher", options->teacher,
                          "Distill from this checkpoint (restored on the same mesh, never trained): the loss becomes "
                          "--kd-weight x the logits distillation loss + the rest x the model's own; the saved "
                          "checkpoint holds the student alone");
  command->add_option("--kd-temperature", options->kd_temperature,
                      "Softens both distributions in the distillation loss: T^2 x KL(softmax(t/T) || softmax(s/T))")
      ->capture_default_str()
      ->check(positive())
      ->needs(teacher);
  command->add_option("--kd-weight", options->kd_weight, "Weight of the distillation loss, in [0, 1]")
      ->capture_default_str()
      ->check(unit_interval())
      ->needs(teacher);
  command->add_option("--data", options->data,
                      "Training data: fashion (Fashion-MNIST images), text (the fortunes corpus, byte tokens), or "
                      "auto (text for a language model)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "fashion", "text"}));
  add_tp_option(command, &options->tp);
  command->add_option("--epochs", options->epochs, "Passes over the training data")
      ->capture_default_str()
      ->check(positive());
  command->add_option("--batch-size", options->batch_size, "Images or sequences per step on each replica")
      ->capture_default_str()
      ->check(positive());
  command->add_option("--lr", options->lr, "Adam learning rate (the first step's)")
      ->capture_default_str()
      ->check(positive());
  command->add_option("--schedule", options->schedule,
                      "Learning-rate schedule: cosine (falls along a half cosine to a tenth of --lr by the last step) "
                      "or constant")
      ->capture_default_str()
      ->check(CLI::IsMember({"cosine", "constant"}));
  command->add_option("--train-samples", options->train_samples,
                      "Use only the first N training images or sequences (all when negative)")
      ->capture_default_str()
      ->check(sample_count());
  command->add_option("--seed", options->seed, "Seed of the initial weights and the shuffle")
      ->capture_default_str()
      ->check(non_negative());
  command->add_option("--out", options->out, "Checkpoint directory to write")->required();
  command
      ->add_option("--save-every", options->save_every,
                   "Every N steps, save a training checkpoint (the model, Adam's state and the position in the "
                   "data) to --out in the background while training goes on; the end of training replaces it "
                   "with the model alone (0: only that final save)")
      ->capture_default_str()
      ->check(non_negative());
  command->add_flag("--resume", options->resume,
                    "Continue from the training checkpoint at --out (saved with --save-every by a job with the "
                    "same options) where it stopped, with the same result as a job never stopped; start from "
                    "step 0 if --out does not exist yet");
  command->callback([options] { run_train(*options); });
}

}  // namespace cli
}  // namespace mto
