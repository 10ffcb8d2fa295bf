#pragma once

#include <memory>
#include <stdexcept>
#include <string>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "distributed/communicator.h"
#include "distributed/mesh.h"

namespace mto {

// Data parallelism over a communicator: the wrapped model is the submodule "module" (so its
// keys read "module." + the inner keys), every rank starts from rank 0's weights, and
// average_gradients() makes the gradients equal on every rank after backward.
//
//   auto dp = mto::DataParallel(model);              // collective: broadcasts rank 0's state
//   loss = criterion(dp->module_as<Net>()->forward(x));
//   loss.backward();
//   dp->average_gradients();                         // collective
//   optimizer.step();
//
// mto::save unwraps it; mto::restore refuses it: restore into the plain model, then wrap.
class DataParallelImpl : public torch::nn::Module {
 public:
  // Wraps `module` and broadcasts rank 0's parameters and buffers to every rank.
  // Collective over `communicator`.
  explicit DataParallelImpl(std::shared_ptr<torch::nn::Module> module,
                            std::shared_ptr<Communicator> communicator = default_mesh()->dp());

  const std::shared_ptr<torch::nn::Module>& module() const { return module_; }

  // The wrapped module as a `T`; throws std::invalid_argument if it is another type.
  template <typename T>
  std::shared_ptr<T> module_as() const {
    auto typed = std::dynamic_pointer_cast<T>(module_);
    if (!typed) throw std::invalid_argument("DataParallel wraps a " + module_->name());
    return typed;
  }

  const std::shared_ptr<Communicator>& communicator() const { return communicator_; }

  // Averages the gradients of every parameter that requires one over all ranks, in a few
  // fused all-reduces; a parameter without a gradient counts as zeros. Collective.
  void average_gradients();

  // Copies rank 0's parameters and buffers to every rank. Collective.
  void broadcast_state();

  void pretty_print(std::ostream& stream) const override;

 private:
  std::shared_ptr<torch::nn::Module> module_;
  std::shared_ptr<Communicator> communicator_;
};

TORCH_MODULE(DataParallel);

// Whether `module` is a DataParallel wrapper.
bool is_data_parallel(const torch::nn::Module& module);

// The module inside a DataParallel wrapper, or `module` itself.
std::shared_ptr<torch::nn::Module> unwrap_data_parallel(
    const std::shared_ptr<torch::nn::Module>& module);

}  // namespace mto
