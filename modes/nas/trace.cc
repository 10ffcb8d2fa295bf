#include "modes/nas/trace.h"

#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "modes/nas/batch_norm.h"
#include "modes/nas/layers.h"
#include "opt/errors.h"
#include "opt/nn/dynamic_layer.h"
#include "opt/nn/observer.h"

namespace mto {
namespace nas {
namespace {

using torch::autograd::Node;

// Operations through which channel c of the output depends on channel c of the input only.
const std::set<std::string>& channelwise_operations() {
  static const auto* names = new std::set<std::string>{
      "ReluBackward0",        "GeluBackward0",           "SiluBackward0",
      "SigmoidBackward0",     "TanhBackward0",           "LeakyReluBackward0",
      "HardtanhBackward0",    "EluBackward0",            "MaxPool2DWithIndicesBackward0",
      "AvgPool2DBackward0",   "AdaptiveAvgPool2DBackward0", "NativeBatchNormBackward0",
      "CloneBackward0",       "NativeDropoutBackward0",  "AddBackward1",
      "SubBackward1",         "MulBackward1",            "DivBackward1",
  };
  return *names;
}

// Reshapes; allowed only as the flatten between a Conv2d and a Linear.
bool is_view(const std::string& name) {
  return name == "ViewBackward0" || name == "ReshapeAliasBackward0" ||
         name == "UnsafeViewBackward0";
}

// What a walk back through the autograd graph from some tensors found.
struct Reach {
  std::set<int> producers;
  std::set<std::string> batch_norms;
  bool view = false;
  // The first operation met that is not channel-wise ("" for none).
  std::string other;
};

// Walks back from `starts` to the outputs of mto::nn layers (`producer_of`), through any
// operation, and records what it passes.
Reach walk(const std::vector<std::shared_ptr<Node>>& starts,
           const std::unordered_map<const Node*, int>& producer_of,
           const std::unordered_map<const c10::TensorImpl*, std::string>& parameter_owner,
           const ModulesByName& modules) {
  Reach reach;
  std::vector<Node*> stack;
  std::unordered_set<const Node*> seen;
  for (const auto& start : starts) {
    if (start) stack.push_back(start.get());
  }
  while (!stack.empty()) {
    Node* node = stack.back();
    stack.pop_back();
    if (!seen.insert(node).second) continue;
    if (auto it = producer_of.find(node); it != producer_of.end()) {
      reach.producers.insert(it->second);
      continue;
    }
    if (auto* leaf = dynamic_cast<torch::autograd::AccumulateGrad*>(node)) {
      auto owner = parameter_owner.find(leaf->variable.unsafeGetTensorImpl());
      const std::string module = owner == parameter_owner.end() ? "" : owner->second;
      if (as_batch_norm(*modules.at(module))) {
        reach.batch_norms.insert(module);
      } else if (reach.other.empty()) {
        reach.other = absl::StrCat("the parameters of '", module, "'");
      }
      continue;
    }
    const std::string name = node->name();
    if (is_view(name)) {
      reach.view = true;
    } else if (!channelwise_operations().count(name) && reach.other.empty()) {
      reach.other = name;
    }
    bool has_parameter = false;
    for (const auto& edge : node->next_edges()) {
      if (!edge.function) continue;
      has_parameter |= dynamic_cast<torch::autograd::AccumulateGrad*>(edge.function.get()) != nullptr;
      stack.push_back(edge.function.get());
    }
    // A batch norm without affine parameters cannot be told apart from its module.
    if (name == "NativeBatchNormBackward0" && !has_parameter && reach.other.empty()) {
      reach.other = "a batch norm without affine parameters";
    }
  }
  return reach;
}

constexpr char kInputProbe[] = "nas_trace_input";
constexpr char kOutputProbe[] = "nas_trace_output";

// Removes the probes of a trace, also when it fails.
class ProbeGuard {
 public:
  explicit ProbeGuard(const std::vector<nn::NamedDynamicLayer>& layers) : layers_(layers) {}
  ~ProbeGuard() {
    for (const auto& layer : layers_) {
      layer.layer->remove_transform(kInputProbe);
      layer.layer->remove_transform(kOutputProbe);
    }
  }

 private:
  const std::vector<nn::NamedDynamicLayer>& layers_;
};

// Sets requires_grad on every parameter for the trace and puts the old flags back.
class RequiresGradGuard {
 public:
  explicit RequiresGradGuard(torch::nn::Module& model) : parameters_(model.parameters()) {
    for (auto& p : parameters_) {
      flags_.push_back(p.requires_grad());
      p.set_requires_grad(true);
    }
  }
  ~RequiresGradGuard() {
    for (size_t i = 0; i < parameters_.size(); ++i) parameters_[i].set_requires_grad(flags_[i]);
  }

 private:
  std::vector<at::Tensor> parameters_;
  std::vector<bool> flags_;
};

std::vector<int64_t> offered_widths(int64_t max_width, const FastNasConfig& config) {
  const int64_t divisor = config.channel_divisor();
  std::set<int64_t> widths{max_width};
  for (double ratio : config.width_ratios()) {
    const int64_t rounded = static_cast<int64_t>(std::ceil(max_width * ratio / divisor)) * divisor;
    widths.insert(std::clamp<int64_t>(rounded, std::min(divisor, max_width), max_width));
  }
  return {widths.begin(), widths.end()};
}

}  // namespace

FastNasMetadata trace_search_space(torch::nn::Module& model, const DummyForward& forward,
                                   const FastNasConfig& config) {
  const std::vector<nn::NamedDynamicLayer> layers = nn::named_dynamic_layers(model);
  const ModulesByName modules = modules_by_name(model);
  std::unordered_map<const Node*, int> producer_of;
  std::vector<std::vector<std::shared_ptr<Node>>> inputs(layers.size());
  std::vector<std::shared_ptr<Node>> outputs;
  std::vector<int64_t> positions(layers.size(), 0);
  Reach from_output;
  std::vector<Reach> reaches(layers.size());
  {
    ProbeGuard probes(layers);
    for (size_t i = 0; i < layers.size(); ++i) {
      layers[i].layer->add_transform(
          nn::Slot::kInput, kInputProbe,
          std::make_shared<nn::ObserverImpl>([&inputs, i](const at::Tensor& x) { inputs[i].push_back(x.grad_fn()); }));
      layers[i].layer->add_transform(
          nn::Slot::kOutput, kOutputProbe, std::make_shared<nn::ObserverImpl>([&, i](const at::Tensor& y) {
            if (y.grad_fn()) {
              producer_of[y.grad_fn().get()] = static_cast<int>(i);
              outputs.push_back(y.grad_fn());
            }
            const int64_t batch = y.dim() > 1 ? y.size(0) : 1;
            const int64_t width = y.dim() == 4 ? y.size(1) : y.size(-1);
            if (batch > 0 && width > 0) positions[i] += y.numel() / (batch * width);
          }));
    }
    RequiresGradGuard requires_grad(model);
    c10::AutoGradMode grad_mode(true);
    const at::Tensor output = forward(model);
    std::unordered_map<const c10::TensorImpl*, std::string> parameter_owner;
    for (const auto& item : model.named_modules()) {
      for (const auto& p : item.value()->named_parameters(/*recurse=*/false)) {
        parameter_owner[p.value().unsafeGetTensorImpl()] = item.key();
      }
    }
    from_output = walk({output.grad_fn()}, producer_of, parameter_owner, modules);
    for (size_t i = 0; i < layers.size(); ++i) {
      reaches[i] = walk(inputs[i], producer_of, parameter_owner, modules);
    }
  }

  // A producer is searchable when only mto::nn layers read it, each through channel-wise
  // operations from it alone.
  std::vector<bool> fixed(layers.size(), false);
  for (int p : from_output.producers) fixed[p] = true;
  for (const Reach& reach : reaches) {
    if (reach.producers.size() > 1 || !reach.other.empty()) {
      for (int p : reach.producers) fixed[p] = true;
    }
  }
  FastNasMetadata metadata;
  for (size_t p = 0; p < layers.size(); ++p) {
    if (fixed[p]) continue;
    const Layer producer = find_layer(modules, layers[p].name);
    const int64_t width = producer.out_width();
    if (producer.groups() != 1) continue;
    WidthGroup group;
    group.set_producer(layers[p].name);
    group.set_max_width(width);
    std::set<std::string> batch_norms;
    bool searchable = true;
    for (size_t c = 0; c < layers.size() && searchable; ++c) {
      if (!reaches[c].producers.count(static_cast<int>(p))) continue;
      const Layer consumer = find_layer(modules, layers[c].name);
      const bool flatten = producer.conv && consumer.linear && reaches[c].view;
      const bool same_kind = (producer.conv != nullptr) == (consumer.conv != nullptr) && !reaches[c].view;
      searchable = (flatten || same_kind) && consumer.groups() == 1 && consumer.in_width() % width == 0 &&
                   (flatten || consumer.in_width() == width);
      Consumer* entry = group.add_consumers();
      entry->set_layer(layers[c].name);
      entry->set_factor(consumer.in_width() / width);
      batch_norms.insert(reaches[c].batch_norms.begin(), reaches[c].batch_norms.end());
    }
    for (const std::string& name : batch_norms) {
      searchable &= find_batch_norm(modules, name).options->num_features() == width;
      group.add_batch_norms(name);
    }
    const std::vector<int64_t> choices = offered_widths(width, config);
    if (!searchable || group.consumers().empty() || choices.size() < 2) continue;
    for (int64_t choice : choices) group.add_choices(choice);
    LayerWidth* active = metadata.add_subnet_config();
    active->set_layer(group.producer());
    active->set_width(width);
    *metadata.add_groups() = std::move(group);
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    if (positions[i] == 0) continue;
    LayerPositions* entry = metadata.add_positions();
    entry->set_layer(layers[i].name);
    entry->set_positions(positions[i]);
  }
  if (metadata.groups().empty()) {
    throw ApplyModeError(
        "fastnas: no searchable width: every mto::nn layer's output reaches the model's output, "
        "another layer's output or an operation other than activations, pooling, batch norm and "
        "flatten (or the dummy forward recorded no gradients)");
  }
  return metadata;
}

}  // namespace nas
}  // namespace mto
