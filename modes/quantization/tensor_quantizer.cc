#include "modes/quantization/tensor_quantizer.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <functional>
#include <stdexcept>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "modes/quantization/fake_quant.h"
#include "modes/quantization/real_quant.h"

namespace mto {
namespace quantization {
namespace {

// Forward: the quantizer's fake quantization; backward: the gradient unchanged.
struct StraightThrough : torch::autograd::Function<StraightThrough> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& x,
                            const std::function<at::Tensor(const at::Tensor&)>& quantize) {
    return quantize(x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {grads[0], at::Tensor()};
  }
};

std::string format_sizes(at::IntArrayRef sizes) {
  return absl::StrCat("[", absl::StrJoin(sizes, ", "), "]");
}

}  // namespace

TensorQuantizerImpl::TensorQuantizerImpl(std::string name, QuantizerAttributes attributes,
                                         bool keepdim_amax)
    : name_(std::move(name)), attributes_(std::move(attributes)), keepdim_amax_(keepdim_amax) {}

void TensorQuantizerImpl::set_amax(const at::Tensor& amax) { set_buffer("_amax", &amax_, amax); }

void TensorQuantizerImpl::set_pre_quant_scale(const at::Tensor& scale) {
  set_buffer("_pre_quant_scale", &pre_quant_scale_, scale);
}

// Replaces the registered buffer `name` (`*buffer`) with `value`, or registers it.
void TensorQuantizerImpl::set_buffer(const char* name, at::Tensor* buffer, const at::Tensor& value) {
  at::Tensor copy = value.detach().to(at::kFloat).clone();
  if (!buffer->defined()) {
    *buffer = register_buffer(name, std::move(copy));
    return;
  }
  // A module registers a name once: replace the registered tensor's contents and shape (a
  // second calibration, or a restored chain that sets it twice; found by
  // tests/fuzz/modelopt_state_fuzz).
  buffer->set_(copy);
}

int64_t TensorQuantizerImpl::normalize_axis(int64_t axis, int64_t dim, const char* what) const {
  if (axis < -dim || axis >= dim) {
    throw std::invalid_argument(absl::StrCat(name_, ": ", what, " ", axis,
                                             " is out of range for a tensor of ", dim,
                                             " dimensions"));
  }
  return axis < 0 ? axis + dim : axis;
}

at::Tensor TensorQuantizerImpl::blocked(const at::Tensor& x) const {
  const int64_t axis = normalize_axis(attributes_.block_axis(), x.dim(), "block axis");
  const int64_t block = attributes_.block_size();
  const int64_t blocks = (x.size(axis) + block - 1) / block;
  at::Tensor padded = x;
  if (blocks * block != x.size(axis)) {
    std::vector<int64_t> pad_sizes = x.sizes().vec();
    pad_sizes[axis] = blocks * block - x.size(axis);
    padded = at::cat({x, at::zeros(pad_sizes, x.options())}, axis);
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape[axis] = block;
  shape.insert(shape.begin() + axis, blocks);
  return padded.reshape(shape);
}

at::Tensor TensorQuantizerImpl::compute_amax(const at::Tensor& x) const {
  const at::Tensor magnitude = x.detach().abs().to(at::kFloat);
  if (attributes_.block_size() > 0) {
    const int64_t axis = normalize_axis(attributes_.block_axis(), x.dim(), "block axis");
    return blocked(magnitude).amax({axis + 1}, /*keepdim=*/true);
  }
  if (!attributes_.has_axis()) return magnitude.max();
  const int64_t axis = normalize_axis(attributes_.axis(), x.dim(), "axis");
  std::vector<int64_t> reduce;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (d != axis) reduce.push_back(d);
  }
  return magnitude.amax(reduce, keepdim_amax_);
}

std::vector<int64_t> TensorQuantizerImpl::amax_shape(at::IntArrayRef sizes) const {
  const int64_t dim = static_cast<int64_t>(sizes.size());
  std::vector<int64_t> shape = sizes.vec();
  if (attributes_.block_size() > 0) {
    const int64_t axis = normalize_axis(attributes_.block_axis(), dim, "block axis");
    shape[axis] = 1;
    const int64_t block = attributes_.block_size();
    shape.insert(shape.begin() + axis, sizes[axis] / block + (sizes[axis] % block != 0 ? 1 : 0));
    return shape;
  }
  if (!attributes_.has_axis()) return {};
  const int64_t axis = normalize_axis(attributes_.axis(), dim, "axis");
  if (!keepdim_amax_) return {sizes[axis]};
  for (int64_t d = 0; d < dim; ++d) {
    if (d != axis) shape[d] = 1;
  }
  return shape;
}

at::Tensor TensorQuantizerImpl::broadcast_amax(int64_t dim) const {
  if (!attributes_.has_axis()) return amax_;
  std::vector<int64_t> shape(dim, 1);
  shape[normalize_axis(attributes_.axis(), dim, "axis")] = -1;
  return amax_.reshape(shape);
}

at::Tensor TensorQuantizerImpl::quantize_values(const at::Tensor& x, const at::Tensor& amax) const {
  if (attributes_.exponent_bits() > 0) return fake_quant_e4m3(x, amax);
  return fake_quant_int(x, amax, attributes_.num_bits(), attributes_.is_unsigned());
}

at::Tensor TensorQuantizerImpl::quantize_blocks(const at::Tensor& x) const {
  const int64_t axis = normalize_axis(attributes_.block_axis(), x.dim(), "block axis");
  const at::Tensor quantized = quantize_values(blocked(x), amax_);
  std::vector<int64_t> padded = x.sizes().vec();
  padded[axis] = quantized.size(axis) * quantized.size(axis + 1);
  return quantized.reshape(padded).narrow(axis, 0, x.size(axis));
}

at::Tensor TensorQuantizerImpl::quantize(const at::Tensor& x) const {
  if (attributes_.block_size() > 0) return quantize_blocks(x);
  return quantize_values(x, broadcast_amax(x.dim()));
}

at::Tensor TensorQuantizerImpl::exported_forward(const at::Tensor& x) const {
  if (keepdim_amax_) return decode_weight(x, scale_, attributes_, weight_sizes_);
  const at::Tensor codes = attributes_.exponent_bits() > 0
                               ? quantize_e4m3(x, scale_)
                               : quantize_int(x, scale_, attributes_.num_bits(), attributes_.is_unsigned());
  return codes.mul_(scale_).to(x.scalar_type());
}

std::shared_ptr<TensorQuantizerImpl> TensorQuantizerImpl::exported(at::Tensor scale, at::Tensor pre_quant_scale,
                                                                   std::vector<int64_t> weight_sizes) const {
  auto copy = std::make_shared<TensorQuantizerImpl>(name_, attributes_, keepdim_amax_);
  copy->exported_ = true;
  copy->scale_ = std::move(scale);
  copy->pre_quant_scale_ = std::move(pre_quant_scale);
  copy->weight_sizes_ = std::move(weight_sizes);
  return copy;
}

void TensorQuantizerImpl::check_sign(const at::Tensor& x) const {
  if (!attributes_.is_unsigned() || x.numel() == 0) return;
  const double lowest = x.min().item<double>();
  if (lowest < 0) {
    throw std::invalid_argument(absl::StrCat(name_, ": negative values encountered in unsigned quantization (",
                                             lowest, "); an unsigned quantizer takes non-negative inputs only"));
  }
}

at::Tensor TensorQuantizerImpl::forward(const at::Tensor& input) {
  const at::Tensor x = pre_quant_scale_.defined() ? input * pre_quant_scale_ : input;
  if (!attributes_.enable()) return x;
  check_sign(x);
  if (exported_) return exported_forward(x);
  if (calibrating_) {
    const at::Tensor amax = compute_amax(x);
    if (!calibration_amax_.defined()) {
      calibration_amax_ = amax;
    } else if (calibration_amax_.sizes() != amax.sizes()) {
      throw std::invalid_argument(absl::StrCat(
          name_, ": calibration saw an amax of shape ", format_sizes(amax.sizes()),
          " after one of shape ", format_sizes(calibration_amax_.sizes()),
          " (inputs of different shapes along the quantization axis)"));
    } else {
      calibration_amax_ = at::max(calibration_amax_, amax);
    }
    return x;
  }
  if (!amax_.defined()) {
    throw std::logic_error(absl::StrCat(name_,
                                        " is enabled but has no amax: calibrate the model "
                                        "(mode 'max_calibrate') before running it"));
  }
  if (x.requires_grad() && at::GradMode::is_enabled()) {
    return StraightThrough::apply(
        x, std::function<at::Tensor(const at::Tensor&)>(
               [this](const at::Tensor& input) { return quantize(input); }));
  }
  return quantize(x);
}

void TensorQuantizerImpl::begin_calibration() {
  calibrating_ = true;
  calibration_amax_ = at::Tensor();
}

at::Tensor TensorQuantizerImpl::end_calibration() {
  calibrating_ = false;
  return std::move(calibration_amax_);
}

QuantizerState TensorQuantizerImpl::state() const {
  QuantizerState state;
  *state.mutable_attributes() = attributes_;
  state.set_has_amax(amax_.defined());
  if (amax_.defined()) {
    for (int64_t size : amax_.sizes()) state.add_amax_shape(size);
  }
  // An exported quantizer's scales are its layer's tensors, recorded by export_quantize.
  state.set_has_pre_quant_scale(pre_quant_scale_.defined() && !exported_);
  if (state.has_pre_quant_scale()) {
    for (int64_t size : pre_quant_scale_.sizes()) state.add_pre_quant_scale_shape(size);
  }
  return state;
}

void TensorQuantizerImpl::pretty_print(std::ostream& stream) const {
  stream << "TensorQuantizer(";
  if (!attributes_.enable()) {
    stream << "disabled";
    if (pre_quant_scale_.defined()) stream << " pre_quant_scale=" << format_sizes(pre_quant_scale_.sizes());
    stream << ")";
    return;
  }
  if (attributes_.exponent_bits() > 0) {
    stream << "fp8 e" << attributes_.exponent_bits() << "m" << attributes_.mantissa_bits();
  } else {
    stream << attributes_.num_bits() << " bit" << (attributes_.is_unsigned() ? " unsigned" : "");
  }
  if (attributes_.has_axis()) stream << " axis=" << attributes_.axis();
  if (attributes_.block_size() > 0) {
    stream << " block_sizes={" << attributes_.block_axis() << ": " << attributes_.block_size() << "}";
  }
  if (exported_) {
    stream << " exported scale=" << format_sizes(scale_.sizes());
  } else if (amax_.defined()) {
    stream << " amax=" << format_sizes(amax_.sizes());
  } else {
    stream << " uncalibrated";
  }
  if (pre_quant_scale_.defined()) stream << " pre_quant_scale=" << format_sizes(pre_quant_scale_.sizes());
  stream << ")";
}

}  // namespace quantization
}  // namespace mto
