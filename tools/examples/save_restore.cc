// A first look at mto: builds a small model from mto::nn layers through a registered
// model-like, saves it as an mto checkpoint and restores it with no model code at all (from
// the model-like recorded in the checkpoint), then checks that the outputs are bit-identical.
//
//   bazel run //tools/examples:save_restore -- [checkpoint_dir]
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <chrono>
#include <filesystem>
#include <iostream>

#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/model_like.h"
#include "opt/nn/linear.h"

namespace {

// A two-layer perceptron for 28x28 images: what the model zoo's "mlp" will look like.
class ExampleMlpImpl : public torch::nn::Module {
 public:
  explicit ExampleMlpImpl(int64_t hidden) {
    fc1 = register_module("fc1", mto::nn::Linear(784, hidden));
    fc2 = register_module("fc2", mto::nn::Linear(hidden, 10));
  }
  at::Tensor forward(const at::Tensor& x) { return fc2->forward(at::relu(fc1->forward(x.flatten(1)))); }

  mto::nn::Linear fc1{nullptr}, fc2{nullptr};
};

MTO_REGISTER_MODEL(example_mlp, [](const nlohmann::json& args) -> std::shared_ptr<torch::nn::Module> {
  return std::make_shared<ExampleMlpImpl>(args.value("hidden", 256));
});

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : (std::filesystem::temp_directory_path() / "mto-example-ckpt").string();
  try {
    at::manual_seed(0);
    auto model = std::dynamic_pointer_cast<ExampleMlpImpl>(mto::ModelLike("example_mlp", {{"hidden", 512}}).build());
    const at::Tensor images = at::rand({16, 1, 28, 28});
    const at::Tensor expected = model->forward(images);

    auto start = std::chrono::steady_clock::now();
    mto::save(*model, dir);
    std::cout << "saved " << dir << " in " << seconds_since(start) << " s:\n";
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      std::cout << "  " << entry.path().filename().string() << "  " << entry.file_size() << " bytes\n";
    }

    start = std::chrono::steady_clock::now();
    auto restored = std::dynamic_pointer_cast<ExampleMlpImpl>(mto::restore(dir));
    std::cout << "restored from the recorded model-like in " << seconds_since(start) << " s\n";
    const bool identical = restored->forward(images).equal(expected);
    std::cout << "outputs bit-identical: " << (identical ? "yes" : "NO") << "\n";
    return identical ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
