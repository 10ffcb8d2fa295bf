#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace mto {
namespace nn {

// Where a transform acts in a dynamic layer's forward pass.
enum class Slot {
  kInput,   // on the layer's input, before the operation
  kWeight,  // on the weight, before it is used
  kOutput,  // on the layer's output
};

// A step that a mode inserts into a dynamic layer (a quantizer, a mask, ...): it maps the
// input, the weight or the output to a tensor of the same role. It is registered as a
// submodule of the layer under its name, so its parameters and buffers appear in the state
// dict as "<layer>.<name>.<key>", e.g. "fc1.weight_quantizer._amax".
class TransformImpl : public torch::nn::Module {
 public:
  using torch::nn::Module::Module;
  virtual at::Tensor forward(const at::Tensor& x) = 0;
};

// How a tensor that a mode keeps on a layer itself (a deployed checkpoint's "weight_scale")
// follows the layer's features, so that a layer split over ranks knows which part of the
// global tensor a rank holds.
enum class Extent {
  kWhole,           // the same on every rank (a per-tensor scale)
  kWeight,          // indexed like the weight: dim 0 by output features, dim 1 by input
                    // features (a block-wise scale [out, in / block])
  kOutputFeatures,  // dim 0 by output features (a per-channel scale)
  kInputFeatures,   // dim 0 by input features (a pre-quantization scale)
};

// The slots of a dynamic layer (mto::nn::Linear, mto::nn::Conv2d): ordered lists of
// transforms applied to its input, weight and output. With no transforms the layer computes
// exactly what its torch::nn counterpart does. Not safe to modify while a forward runs.
class DynamicLayer {
 public:
  virtual ~DynamicLayer() = default;

  // Appends `transform` to `slot` and registers it as the submodule `name`. Throws
  // std::invalid_argument if the layer already has a submodule of that name.
  void add_transform(Slot slot, const std::string& name,
                     std::shared_ptr<TransformImpl> transform);

  // Puts `transform` in the place (slot and position) of the transform `name` and registers
  // it under that name. Throws std::invalid_argument if there is no such transform.
  void replace_transform(const std::string& name, std::shared_ptr<TransformImpl> transform);

  // Registers `tensor` as the buffer `name` of the layer itself, following `extent`, and
  // returns the registered tensor. Throws std::invalid_argument if the layer has a
  // parameter or buffer of that name.
  at::Tensor register_layer_tensor(const std::string& name, const at::Tensor& tensor, Extent extent);

  // The extent of a tensor that register_layer_tensor registered; std::nullopt for any other
  // key.
  std::optional<Extent> layer_tensor_extent(const std::string& key) const;

  // Unregisters the transform `name` and returns it; nullptr if there is none.
  std::shared_ptr<TransformImpl> remove_transform(const std::string& name);

  // The transform `name`, or nullptr.
  std::shared_ptr<TransformImpl> transform(const std::string& name) const;

  // Names of the transforms in `slot`, in the order they apply.
  std::vector<std::string> transform_names(Slot slot) const;

  // Whether `key`, a state-dict key relative to the layer ("input_quantizer._amax"), is a
  // tensor of a transform in `slot`.
  bool is_transform_key(Slot slot, const std::string& key) const;

  // The layer as a module, for registering transforms.
  virtual torch::nn::Module& as_module() = 0;

 protected:
  // Applies the transforms of `slot` to `x`, in order.
  at::Tensor apply_transforms(Slot slot, const at::Tensor& x) const;

 private:
  struct Entry {
    Slot slot;
    std::string name;
    std::shared_ptr<TransformImpl> transform;
  };
  std::vector<Entry> transforms_;
  std::map<std::string, Extent> layer_tensors_;
};

// A dynamic layer of a model under its dotted name ("block.0.fc1").
struct NamedDynamicLayer {
  std::string name;
  DynamicLayer* layer;
};

// The dynamic layers of `model` (itself included, as ""), in module order. The pointers
// stay valid while the model owns the layers.
std::vector<NamedDynamicLayer> named_dynamic_layers(torch::nn::Module& model);

}  // namespace nn
}  // namespace mto
