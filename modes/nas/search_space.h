#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "modes/nas/nas.pb.h"

namespace mto {
namespace nas {

// The searchable widths installed in a model by "fastnas": each consumer layer masks the
// input channels beyond its group's active width, so that the model computes exactly what
// the physically smaller subnet would. A handle onto the model's layers; the model must
// outlive it. Not safe to use while a forward runs.
class SearchSpace {
 public:
  // Installs the groups of `metadata` into the unmodified `model` with the widths of its
  // subnet_config (full widths where it names none). Throws ApplyModeError naming the layer
  // if the model does not fit (a missing layer, another width, a width not offered).
  static void install(torch::nn::Module& model, const FastNasMetadata& metadata);

  // The search space installed in `model`. Throws ApplyModeError if there is none.
  explicit SearchSpace(torch::nn::Module& model);

  const FastNasMetadata& metadata() const;
  int64_t num_groups() const;
  // The active width of every group, in group order.
  std::vector<int64_t> widths() const;
  // Makes `widths` (one offered width per group) active. Throws ApplyModeError otherwise.
  void set_widths(const std::vector<int64_t>& widths);
  // The full (largest) widths.
  std::vector<int64_t> max_widths() const;
  // The active widths by producer name, as metadata records them.
  std::vector<LayerWidth> subnet_config() const;
  // Makes the widths of `subnet` active (full width for groups it does not name). Throws
  // ApplyModeError naming the layer for an unknown group or a width not offered.
  void select(const google::protobuf::RepeatedPtrField<LayerWidth>& subnet);

  // Parameters of the model with `widths` active.
  int64_t count_params(const std::vector<int64_t>& widths) const;
  // Multiply-accumulates per sample of the mto::nn layers with `widths` active.
  int64_t count_macs(const std::vector<int64_t>& widths) const;

  // Reorders every group's channels by importance (the norm of the consumers' weights that
  // read them), largest first, in the producer, its batch norms and the consumers alike:
  // the full model computes the same function, and a width k keeps the k most important
  // channels. Ties keep their order, so sorting twice changes nothing.
  void sort_by_importance();

  // Makes the active widths physical: slices the producers, batch norms and consumers, and
  // removes the masks. The model then has no search space.
  void export_subnet();

  // The groups and active widths that the masks of one model share (internal).
  struct State;

 private:
  torch::nn::Module* model_;
  std::shared_ptr<State> state_;
};

}  // namespace nas
}  // namespace mto
