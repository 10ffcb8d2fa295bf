#pragma once

#include <ostream>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/pimpl.h>

#include "modes/quantization/quantization.pb.h"
#include "opt/nn/dynamic_layer.h"

namespace mto {
namespace quantization {

// Fake-quantizes the tensor it transforms (a layer's input, weight or output), as the Python
// original's TensorQuantizer does: integers of 2..8 bits or FP8 E4M3, with one scale per
// tensor, per index of an axis, or per block. The scales come from the `_amax` buffer,
// which calibration fills. Gradients pass straight through, so quantization-aware
// fine-tuning works. Disabled, it returns its input unchanged (times its pre-quantization
// scale, when it has one).
class TensorQuantizerImpl : public nn::TransformImpl {
 public:
  // `name` is the quantizer's name in the model ("fc1.weight_quantizer"), for messages.
  // `keepdim_amax`: per-axis amax keeps the reduced dimensions (for weights, whose rank is
  // fixed, as the Python original stores them); otherwise it is one-dimensional.
  TensorQuantizerImpl(std::string name, QuantizerAttributes attributes, bool keepdim_amax);

  at::Tensor forward(const at::Tensor& x) override;
  void pretty_print(std::ostream& stream) const override;

  const std::string& quantizer_name() const { return name_; }
  const QuantizerAttributes& attributes() const { return attributes_; }
  void set_attributes(const QuantizerAttributes& attributes) { attributes_ = attributes; }

  // Whether the `_amax` buffer exists (after calibration, or after restoring a calibrated
  // quantizer).
  bool has_amax() const { return amax_.defined(); }
  const at::Tensor& amax() const { return amax_; }
  // Creates or replaces the `_amax` buffer with a float32 copy of `amax`.
  void set_amax(const at::Tensor& amax);

  // The per-feature scale the input is multiplied by before anything else, even while the
  // quantizer is disabled (SmoothQuant, AWQ): the `_pre_quant_scale` buffer, float32
  // [features], broadcast along the last dimension (nn.Linear inputs).
  bool has_pre_quant_scale() const { return pre_quant_scale_.defined(); }
  const at::Tensor& pre_quant_scale() const { return pre_quant_scale_; }
  // Creates or replaces the `_pre_quant_scale` buffer with a float32 copy of `scale`.
  void set_pre_quant_scale(const at::Tensor& scale);

  // The amax of `x` for this quantizer's granularity, in the shape `_amax` has.
  at::Tensor compute_amax(const at::Tensor& x) const;
  // The shape compute_amax gives for a tensor of `sizes`, computed from the sizes alone.
  std::vector<int64_t> amax_shape(at::IntArrayRef sizes) const;

  // While calibrating, forward records the running amax of what it sees and returns its
  // input unchanged. end_calibration returns the running amax (undefined when the
  // quantizer saw nothing) and stops.
  void begin_calibration();
  at::Tensor end_calibration();
  bool calibrating() const { return calibrating_; }

  // This quantizer as the metadata records it.
  QuantizerState state() const;

  // A copy of this quantizer for a deployed layer (mode "export_quantize"), with no buffers
  // of its own: it quantizes with the fixed `scale` (quantizer_scale of its amax, in any
  // shape holding the same values in order) and multiplies by `pre_quant_scale` (when
  // defined), tensors that the layer owns under their deployment names ("weight_scale",
  // "input_scale", "pre_quant_scale"). A weight quantizer then takes the weight's codes
  // (real_quant.h encode_weight) and returns the float weight of `weight_sizes` they stand
  // for; an input quantizer fake-quantizes as before. Either way, the outputs equal this
  // quantizer's, bit for bit.
  std::shared_ptr<TensorQuantizerImpl> exported(at::Tensor scale, at::Tensor pre_quant_scale,
                                                std::vector<int64_t> weight_sizes) const;
  bool is_exported() const { return exported_; }

 private:
  void set_buffer(const char* name, at::Tensor* buffer, const at::Tensor& value);
  at::Tensor quantize(const at::Tensor& x) const;
  at::Tensor quantize_blocks(const at::Tensor& x) const;
  // `x` padded with zeros along the block axis to whole blocks and viewed with that axis
  // split in two: [..., blocks, block_size, ...].
  at::Tensor blocked(const at::Tensor& x) const;
  at::Tensor quantize_values(const at::Tensor& x, const at::Tensor& amax) const;
  // forward of an exported quantizer, after the pre-quantization scale.
  at::Tensor exported_forward(const at::Tensor& x) const;
  // Throws std::invalid_argument naming this quantizer if it is unsigned and `x` holds a
  // negative value, as Model Optimizer does ("Negative values encountered in unsigned
  // quantization"): clamping them to 0 would change the model without a word.
  void check_sign(const at::Tensor& x) const;
  // `amax_` shaped to broadcast against a tensor of `dim` dimensions.
  at::Tensor broadcast_amax(int64_t dim) const;
  int64_t normalize_axis(int64_t axis, int64_t dim, const char* what) const;

  std::string name_;
  QuantizerAttributes attributes_;
  // Set for weight quantizers (see the constructor).
  bool keepdim_amax_;
  bool exported_ = false;
  at::Tensor scale_;
  std::vector<int64_t> weight_sizes_;
  at::Tensor amax_;
  at::Tensor pre_quant_scale_;
  bool calibrating_ = false;
  at::Tensor calibration_amax_;
};

TORCH_MODULE(TensorQuantizer);

}  // namespace quantization
}  // namespace mto
