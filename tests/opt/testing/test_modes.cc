#include "tests/opt/testing/test_modes.h"

#include <ATen/ATen.h>
#include <google/protobuf/struct.pb.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "opt/model_like.h"
#include "opt/registry.h"
#include "tests/opt/testing/test_modes.pb.h"

namespace mto {
namespace test {
namespace {

using google::protobuf::Struct;
using nn::Slot;

std::string join_name(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : absl::StrCat(prefix, ".", name);
}

at::Tensor parameter(nn::DynamicLayer& layer, const std::string& name) {
  return layer.as_module().named_parameters(/*recurse=*/false)[name];
}

void log_convert(const std::string& mode) { test_events().push_back("convert:" + mode); }

// ---- fake quantization ---------------------------------------------------------------

class TestFakeQuantImpl : public nn::TransformImpl {
 public:
  TestFakeQuantImpl(int bits, at::IntArrayRef amax_shape) : bits_(bits) {
    amax_ = register_buffer("_amax", at::zeros(amax_shape));
  }
  at::Tensor forward(const at::Tensor& w) override {
    const double bound = (1 << (bits_ - 1)) - 1;
    at::Tensor scale = bound / amax_.clamp_min(1e-8);
    return at::clamp(at::round(w * scale), -bound, bound) / scale;
  }
  at::Tensor amax_;

 private:
  int bits_;
};

class TestQuantizeMode : public ModeDescriptor {
 public:
  std::string name() const override { return "test_quantize"; }
  MessagePtr config_class() const override {
    auto config = std::make_unique<QuantizeTestConfig>();
    config->set_num_bits(8);
    return config;
  }
  MessagePtr metadata_class() const override { return std::make_unique<QuantizeTestMetadata>(); }
  void validate_config(const Message& message) const override {
    const auto& config = message_as<QuantizeTestConfig>(message, "config of test_quantize");
    if (config.num_bits() < 2 || config.num_bits() > 8) {
      throw ConfigError(absl::StrCat("config of mode 'test_quantize': num_bits must be in [2, 8], got ",
                                     config.num_bits()));
    }
  }
  std::optional<ModeSet> next_prohibited_modes() const override {
    return ModeSet{"test_sparse", "test_nas"};
  }
  ConvertResult convert(ModulePtr model, const Message& message, const RuntimeContext&) const override {
    log_convert(name());
    const auto& config = message_as<QuantizeTestConfig>(message, name());
    auto metadata = std::make_unique<QuantizeTestMetadata>();
    torch::NoGradGuard no_grad;
    for (const auto& [layer_name, layer] : nn::named_dynamic_layers(*model)) {
      at::Tensor w = parameter(*layer, "weight");
      at::Tensor amax;
      if (config.per_channel()) {
        std::vector<int64_t> dims;
        for (int64_t d = 1; d < w.dim(); ++d) dims.push_back(d);
        amax = w.abs().amax(dims, /*keepdim=*/true);
      } else {
        amax = w.abs().max();
      }
      auto quantizer = std::make_shared<TestFakeQuantImpl>(config.num_bits(), amax.sizes());
      quantizer->amax_.copy_(amax);
      layer->add_transform(Slot::kWeight, "weight_quantizer", quantizer);
      auto& shape = (*metadata->mutable_quantizer_state())[join_name(layer_name, "weight_quantizer")];
      for (int64_t d : amax.sizes()) shape.add_amax_shape(d);
    }
    return {model, std::move(metadata)};
  }
  ModulePtr restore(ModulePtr model, const Message& message, const Message& meta) const override {
    const auto& config = message_as<QuantizeTestConfig>(message, name());
    const auto& metadata = message_as<QuantizeTestMetadata>(meta, name());
    std::set<std::string> expected;
    for (const auto& [key, shape] : metadata.quantizer_state()) expected.insert(key);
    std::set<std::string> found;
    auto layers = nn::named_dynamic_layers(*model);
    for (const auto& [layer_name, layer] : layers) found.insert(join_name(layer_name, "weight_quantizer"));
    std::vector<std::string> unmatched, extra;
    for (const auto& key : expected) {
      if (!found.count(key)) unmatched.push_back(key);
    }
    for (const auto& key : found) {
      if (!expected.count(key)) extra.push_back(key);
    }
    if (!unmatched.empty()) throw ApplyModeError("Unmatched keys: " + absl::StrJoin(unmatched, ", "));
    if (!extra.empty()) throw ApplyModeError("Extra keys: " + absl::StrJoin(extra, ", "));
    for (const auto& [layer_name, layer] : layers) {
      const auto& shape = metadata.quantizer_state().at(join_name(layer_name, "weight_quantizer"));
      std::vector<int64_t> sizes(shape.amax_shape().begin(), shape.amax_shape().end());
      layer->add_transform(Slot::kWeight, "weight_quantizer",
                           std::make_shared<TestFakeQuantImpl>(config.num_bits(), sizes));
    }
    return model;
  }
};

// ---- NAS: an active output width per linear layer -------------------------------------

class TestWidthMaskImpl : public nn::TransformImpl {
 public:
  explicit TestWidthMaskImpl(int64_t width) : width_(width) {}
  at::Tensor forward(const at::Tensor& y) override {
    if (width_ >= y.size(-1)) return y;
    at::Tensor mask = at::zeros({y.size(-1)}, y.options());
    mask.narrow(0, 0, width_).fill_(1);
    return y * mask;
  }
  int64_t width() const { return width_; }

 private:
  int64_t width_;
};

class TestZeroPadImpl : public nn::TransformImpl {
 public:
  explicit TestZeroPadImpl(int64_t features) : features_(features) {}
  at::Tensor forward(const at::Tensor& y) override {
    return at::constant_pad_nd(y, {0, features_ - y.size(-1)});
  }

 private:
  int64_t features_;
};

std::vector<std::pair<std::string, nn::LinearImpl*>> named_linears(torch::nn::Module& model) {
  std::vector<std::pair<std::string, nn::LinearImpl*>> out;
  for (const auto& [name, layer] : nn::named_dynamic_layers(model)) {
    if (auto* linear = dynamic_cast<nn::LinearImpl*>(layer)) out.emplace_back(name, linear);
  }
  return out;
}

class TestNasMode : public ModeDescriptor {
 public:
  std::string name() const override { return "test_nas"; }
  MessagePtr config_class() const override {
    auto config = std::make_unique<NasTestConfig>();
    config->set_min_ratio(0.5);
    return config;
  }
  MessagePtr metadata_class() const override { return std::make_unique<NasTestMetadata>(); }
  void validate_config(const Message& message) const override {
    const auto& config = message_as<NasTestConfig>(message, "config of test_nas");
    if (!(config.min_ratio() > 0 && config.min_ratio() <= 1)) {
      throw ConfigError(absl::StrCat("config of mode 'test_nas': min_ratio must be in (0, 1], got ",
                                     config.min_ratio()));
    }
  }
  std::optional<std::string> export_mode() const override { return "test_export_nas"; }
  std::optional<ModeSet> next_modes() const override {
    return ModeSet{"test_export_nas", "test_kd", "test_quantize", "test_sparse"};
  }
  ConvertResult convert(ModulePtr model, const Message& message, const RuntimeContext&) const override {
    log_convert(name());
    const auto& config = message_as<NasTestConfig>(message, name());
    std::mt19937_64 rng(static_cast<uint64_t>(config.seed()));
    auto metadata = std::make_unique<NasTestMetadata>();
    for (const auto& [layer_name, linear] : named_linears(*model)) {
      const int64_t out = linear->options.out_features();
      const int64_t low = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(config.min_ratio() * out)));
      std::uniform_int_distribution<int64_t> pick(low, std::max(low, out - 1));
      (*metadata->mutable_subnet_config())[layer_name] = pick(rng);
    }
    apply_widths(*model, *metadata);
    return {model, std::move(metadata)};
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message& meta) const override {
    apply_widths(*model, message_as<NasTestMetadata>(meta, name()));
    return model;
  }

 private:
  void apply_widths(torch::nn::Module& model, const NasTestMetadata& metadata) const {
    for (const auto& [layer_name, linear] : named_linears(model)) {
      auto it = metadata.subnet_config().find(layer_name);
      if (it == metadata.subnet_config().end()) {
        throw ApplyModeError(absl::StrCat("test_nas: no width recorded for layer ", layer_name));
      }
      linear->add_transform(Slot::kOutput, "width_mask", std::make_shared<TestWidthMaskImpl>(it->second));
    }
  }
};

// Shrinks every masked linear layer to its active width, padding its output with zeros.
void export_widths(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  for (const auto& [layer_name, linear] : named_linears(model)) {
    auto mask = std::dynamic_pointer_cast<TestWidthMaskImpl>(linear->remove_transform("width_mask"));
    if (!mask) continue;
    const int64_t width = std::min(mask->width(), linear->options.out_features());
    linear->weight.set_data(linear->weight.narrow(0, 0, width).clone());
    if (linear->bias.defined()) linear->bias.set_data(linear->bias.narrow(0, 0, width).clone());
    linear->add_transform(Slot::kOutput, "zero_pad",
                          std::make_shared<TestZeroPadImpl>(linear->options.out_features()));
  }
}

class TestExportNasMode : public ModeDescriptor {
 public:
  std::string name() const override { return "test_export_nas"; }
  MessagePtr config_class() const override { return std::make_unique<EmptyTestConfig>(); }
  bool is_export_mode() const override { return true; }
  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
    log_convert(name());
    export_widths(*model);
    return {model, nullptr};
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override {
    export_widths(*model);
    return model;
  }
};

// ---- sparsity: a magnitude mask per layer ---------------------------------------------

class TestMaskImpl : public nn::TransformImpl {
 public:
  explicit TestMaskImpl(at::IntArrayRef shape) {
    mask_ = register_buffer("_weight_mask", at::zeros(shape));
  }
  at::Tensor forward(const at::Tensor& w) override { return w * mask_; }
  at::Tensor mask_;
};

class TestSparseMode : public ModeDescriptor {
 public:
  std::string name() const override { return "test_sparse"; }
  MessagePtr config_class() const override {
    auto config = std::make_unique<SparsityTestConfig>();
    config->set_sparsity(0.5);
    return config;
  }
  void validate_config(const Message& message) const override {
    const auto& config = message_as<SparsityTestConfig>(message, "config of test_sparse");
    if (!(config.sparsity() >= 0 && config.sparsity() < 1)) {
      throw ConfigError(absl::StrCat("config of mode 'test_sparse': sparsity must be in [0, 1), got ",
                                     config.sparsity()));
    }
  }
  std::optional<std::string> export_mode() const override { return "test_export_sparse"; }
  std::optional<ModeSet> next_modes() const override {
    return ModeSet{"test_export_sparse", "test_kd", "test_quantize"};
  }
  ConvertResult convert(ModulePtr model, const Message& message, const RuntimeContext&) const override {
    log_convert(name());
    const auto& config = message_as<SparsityTestConfig>(message, name());
    torch::NoGradGuard no_grad;
    for (const auto& [layer_name, layer] : nn::named_dynamic_layers(*model)) {
      at::Tensor w = parameter(*layer, "weight");
      auto masker = std::make_shared<TestMaskImpl>(w.sizes());
      const int64_t k = static_cast<int64_t>(config.sparsity() * w.numel());
      if (k == 0) {
        masker->mask_.fill_(1);
      } else {
        at::Tensor threshold = std::get<0>(w.abs().flatten().kthvalue(k));
        masker->mask_.copy_(w.abs().gt(threshold));
      }
      layer->add_transform(Slot::kWeight, "weight_sparsifier", masker);
    }
    return {model, nullptr};
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override {
    for (const auto& [layer_name, layer] : nn::named_dynamic_layers(*model)) {
      layer->add_transform(Slot::kWeight, "weight_sparsifier",
                           std::make_shared<TestMaskImpl>(parameter(*layer, "weight").sizes()));
    }
    return model;
  }
};

class TestExportSparseMode : public ModeDescriptor {
 public:
  std::string name() const override { return "test_export_sparse"; }
  MessagePtr config_class() const override { return std::make_unique<EmptyTestConfig>(); }
  bool is_export_mode() const override { return true; }
  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
    log_convert(name());
    torch::NoGradGuard no_grad;
    for (const auto& [layer_name, layer] : nn::named_dynamic_layers(*model)) {
      auto masker = std::dynamic_pointer_cast<TestMaskImpl>(layer->remove_transform("weight_sparsifier"));
      if (masker) parameter(*layer, "weight").mul_(masker->mask_);
    }
    return {model, nullptr};
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override {
    for (const auto& [layer_name, layer] : nn::named_dynamic_layers(*model)) {
      layer->remove_transform("weight_sparsifier");
    }
    return model;
  }
};

// ---- modes with relations only --------------------------------------------------------

class TestKdMode : public ModeDescriptor {
 public:
  std::string name() const override { return "test_kd"; }
  MessagePtr config_class() const override { return std::make_unique<KdTestConfig>(); }
  std::optional<std::string> export_mode() const override { return "test_export_student"; }
  ConvertResult convert(ModulePtr model, const Message& message, const RuntimeContext&) const override {
    log_convert(name());
    auto metadata = std::make_unique<Struct>();
    (*metadata->mutable_fields())["teacher"].set_string_value(
        message_as<KdTestConfig>(message, name()).teacher());
    return {model, std::move(metadata)};
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override { return model; }
};

class TestExportStudentMode : public ModeDescriptor {
 public:
  std::string name() const override { return "test_export_student"; }
  MessagePtr config_class() const override { return std::make_unique<EmptyTestConfig>(); }
  bool is_export_mode() const override { return true; }
  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
    log_convert(name());
    return {model, nullptr};
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override { return model; }
};

class TestTerminalMode : public ModeDescriptor {
 public:
  std::string name() const override { return "test_terminal"; }
  MessagePtr config_class() const override { return std::make_unique<EmptyTestConfig>(); }
  std::optional<ModeSet> next_modes() const override { return ModeSet{}; }
  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
    log_convert(name());
    return {model, nullptr};
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override { return model; }
};

class TestModelLikeMode : public ModeDescriptor {
 public:
  std::string name() const override { return "test_modellike"; }
  MessagePtr config_class() const override { return std::make_unique<EmptyTestConfig>(); }
  bool require_model_like() const override { return true; }
  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
    log_convert(name());
    auto like = std::dynamic_pointer_cast<ModelLikeModule>(model);
    auto metadata = std::make_unique<Struct>();
    (*metadata->mutable_fields())["factory"].set_string_value(like->model_like().factory);
    return {model, std::move(metadata)};
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override {
    if (!std::dynamic_pointer_cast<ModelLikeModule>(model)) {
      throw ApplyModeError("test_modellike: restore did not receive a model-like");
    }
    return model;
  }
};

class TestHooksMode : public ModeDescriptor {
 public:
  std::string name() const override { return "test_hooks"; }
  MessagePtr config_class() const override { return std::make_unique<EmptyTestConfig>(); }
  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext& context) const override {
    log_convert(name());
    auto metadata = std::make_unique<Struct>();
    (*metadata->mutable_fields())["new_mode_updates"].set_number_value(0);
    if (context.contains(kTestTag)) {
      (*metadata->mutable_fields())["kwarg_seen"].set_bool_value(true);
    }
    return {model, std::move(metadata)};
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override { return model; }
  void update_for_new_mode(torch::nn::Module&, Message&, Message& metadata) const override {
    test_events().push_back("update_for_new_mode");
    auto& fields = *message_as<Struct>(metadata, name()).mutable_fields();
    fields["new_mode_updates"].set_number_value(fields["new_mode_updates"].number_value() + 1);
  }
  void update_for_save(torch::nn::Module&, Message&, Message& metadata) const override {
    test_events().push_back("update_for_save");
    (*message_as<Struct>(metadata, name()).mutable_fields())["saved"].set_bool_value(true);
  }
};

class TestFailMode : public ModeDescriptor {
 public:
  std::string name() const override { return "test_fail"; }
  MessagePtr config_class() const override { return std::make_unique<EmptyTestConfig>(); }
  ConvertResult convert(ModulePtr, const Message&, const RuntimeContext&) const override {
    throw ApplyModeError("test_fail cannot convert this model");
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override { return model; }
};

MTO_REGISTER_MODE(test_quantization, TestQuantizeMode);
MTO_REGISTER_MODE(test_nas, TestNasMode);
MTO_REGISTER_MODE(test_nas, TestExportNasMode);
MTO_REGISTER_MODE(test_sparsity, TestSparseMode);
MTO_REGISTER_MODE(test_sparsity, TestExportSparseMode);
MTO_REGISTER_MODE(test_misc, TestKdMode);
MTO_REGISTER_MODE(test_misc, TestExportStudentMode);
MTO_REGISTER_MODE(test_misc, TestTerminalMode);
MTO_REGISTER_MODE(test_misc, TestModelLikeMode);
MTO_REGISTER_MODE(test_misc, TestHooksMode);
MTO_REGISTER_MODE(test_misc, TestFailMode);

int64_t int_arg(const nlohmann::json& args, const char* key, int64_t fallback) {
  if (!args.contains(key)) return fallback;
  if (!args[key].is_number_integer()) throw ConfigError(absl::StrCat("model argument '", key, "' must be an integer"));
  return args[key].get<int64_t>();
}

MTO_REGISTER_MODEL(test_mlp, [](const nlohmann::json& args) -> ModulePtr {
  at::manual_seed(static_cast<uint64_t>(int_arg(args, "seed", 0)));
  return std::make_shared<TestMlpImpl>(int_arg(args, "hidden", 16));
});

MTO_REGISTER_MODEL(test_cnn, [](const nlohmann::json& args) -> ModulePtr {
  at::manual_seed(static_cast<uint64_t>(int_arg(args, "seed", 0)));
  return std::make_shared<TestCnnImpl>();
});

}  // namespace

std::vector<std::string>& test_events() {
  static std::vector<std::string> events;
  return events;
}

TestMlpImpl::TestMlpImpl(int64_t hidden) {
  fc1 = register_module("fc1", nn::Linear(8, hidden));
  fc2 = register_module("fc2", nn::Linear(hidden, hidden));
  fc3 = register_module("fc3", nn::Linear(hidden, 4));
}

at::Tensor TestMlpImpl::forward(const at::Tensor& x) {
  return fc3->forward(at::relu(fc2->forward(at::relu(fc1->forward(x)))));
}

TestCnnImpl::TestCnnImpl() {
  conv = register_module("conv", nn::Conv2d(1, 4, 3));
  fc = register_module("fc", nn::Linear(4 * 6 * 6, 5));
}

at::Tensor TestCnnImpl::forward(const at::Tensor& x) {
  return fc->forward(at::relu(conv->forward(x)).flatten(1));
}

at::Tensor test_forward(const std::shared_ptr<torch::nn::Module>& model, const at::Tensor& x) {
  if (auto mlp = std::dynamic_pointer_cast<TestMlpImpl>(model)) return mlp->forward(x);
  if (auto cnn = std::dynamic_pointer_cast<TestCnnImpl>(model)) return cnn->forward(x);
  throw std::invalid_argument("test_forward: not a test model: " + model->name());
}

at::Tensor test_input(const std::shared_ptr<torch::nn::Module>& model) {
  at::manual_seed(1234);
  if (std::dynamic_pointer_cast<TestCnnImpl>(model)) return at::randn({2, 1, 8, 8});
  return at::randn({2, 8});
}

}  // namespace test
}  // namespace mto
