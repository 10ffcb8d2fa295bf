#include "modes/nas/search_space.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/nn/modules/batchnorm.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "modes/nas/batch_norm.h"
#include "opt/errors.h"
#include "opt/nn/conv2d.h"
#include "opt/nn/dynamic_layer.h"
#include "opt/nn/linear.h"

namespace mto {
namespace nas {
namespace {

using torch::autograd::Node;

// The name under which a consumer holds its input-channel mask.
constexpr char kMaskName[] = "nas_width_mask";

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

// An mto::nn layer of the model, by name.
struct Layer {
  std::string name;
  torch::nn::Module* module = nullptr;
  nn::DynamicLayer* dynamic = nullptr;
  nn::LinearImpl* linear = nullptr;
  nn::Conv2dImpl* conv = nullptr;

  at::Tensor& weight() const { return linear ? linear->weight : conv->weight; }
  at::Tensor& bias() const { return linear ? linear->bias : conv->bias; }
  int64_t in_width() const { return linear ? linear->options.in_features() : conv->options.in_channels(); }
  int64_t out_width() const { return linear ? linear->options.out_features() : conv->options.out_channels(); }
  int64_t groups() const { return linear ? 1 : conv->options.groups(); }
  int64_t kernel_area() const {
    return linear ? 1 : conv->options.kernel_size()->at(0) * conv->options.kernel_size()->at(1);
  }
  void set_in_width(int64_t width) const {
    if (linear) {
      linear->options.in_features(width);
    } else {
      conv->options.in_channels(width);
    }
  }
  void set_out_width(int64_t width) const {
    if (linear) {
      linear->options.out_features(width);
    } else {
      conv->options.out_channels(width);
    }
  }
  // Parameters of the layer with `out` outputs and `in` inputs.
  int64_t params(int64_t out, int64_t in) const {
    return out * (in / groups()) * kernel_area() + (bias().defined() ? out : 0);
  }
};

std::map<std::string, torch::nn::Module*> modules_by_name(torch::nn::Module& model) {
  std::map<std::string, torch::nn::Module*> out;
  for (const auto& item : model.named_modules()) out[item.key()] = item.value().get();
  return out;
}

// The Linear or Conv2d `name` of `model`; throws ApplyModeError if there is none.
Layer find_layer(const std::map<std::string, torch::nn::Module*>& modules, const std::string& name) {
  auto it = modules.find(name);
  Layer layer;
  layer.name = name;
  if (it != modules.end()) {
    layer.module = it->second;
    layer.dynamic = dynamic_cast<nn::DynamicLayer*>(it->second);
    layer.linear = dynamic_cast<nn::LinearImpl*>(it->second);
    layer.conv = dynamic_cast<nn::Conv2dImpl*>(it->second);
  }
  if (layer.linear == nullptr && layer.conv == nullptr) {
    throw ApplyModeError(absl::StrCat("fastnas: the model has no mto::nn::Linear or mto::nn::Conv2d '", name, "'"));
  }
  return layer;
}

// The batch norm `name` of `model`; throws ApplyModeError if there is none.
BatchNorm find_batch_norm(const std::map<std::string, torch::nn::Module*>& modules, const std::string& name) {
  auto it = modules.find(name);
  std::optional<BatchNorm> norm = it == modules.end() ? std::nullopt : as_batch_norm(*it->second);
  if (!norm) throw ApplyModeError(absl::StrCat("fastnas: the model has no BatchNorm1d or BatchNorm2d '", name, "'"));
  return *norm;
}

// Makes `tensor` (a parameter or buffer) its first `size` entries along `dim`.
void keep_first(at::Tensor& tensor, int64_t dim, int64_t size) {
  if (tensor.defined()) tensor.set_data(tensor.narrow(dim, 0, size).clone());
}

// Reorders `tensor` along `dim` by `index`, in place.
void reorder(at::Tensor& tensor, int64_t dim, const at::Tensor& index) {
  if (tensor.defined()) tensor.copy_(tensor.index_select(dim, index));
}

// Consumer input columns of channels `channels`, `factor` features each.
at::Tensor feature_index(const at::Tensor& channels, int64_t factor) {
  return (channels.unsqueeze(1) * factor + at::arange(factor, at::kLong).unsqueeze(0)).flatten();
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
           const std::map<std::string, torch::nn::Module*>& modules) {
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

// Records the tensors that pass a slot during the trace.
class ProbeImpl : public nn::TransformImpl {
 public:
  explicit ProbeImpl(std::function<void(const at::Tensor&)> record) : record_(std::move(record)) {}
  at::Tensor forward(const at::Tensor& x) override {
    record_(x);
    return x;
  }

 private:
  std::function<void(const at::Tensor&)> record_;
};

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

// The search space shared by the masks of one model.
struct SearchSpace::State {
  FastNasMetadata metadata;
  std::vector<int64_t> active;
};

namespace {

// Zeroes the input columns of a consumer beyond its group's active width.
class WidthMaskImpl : public nn::TransformImpl {
 public:
  WidthMaskImpl(std::shared_ptr<SearchSpace::State> state, int group, int64_t factor)
      : state(std::move(state)), group(group), factor(factor) {}

  at::Tensor forward(const at::Tensor& weight) override {
    const int64_t keep = state->active[group] * factor;
    if (keep == weight.size(1)) return weight;
    if (mask_.size(0) != weight.size(1) || mask_keep_ != keep) {
      mask_ = at::zeros({weight.size(1)}, weight.options());
      mask_.narrow(0, 0, keep).fill_(1);
      mask_keep_ = keep;
    }
    std::vector<int64_t> shape(weight.dim(), 1);
    shape[1] = -1;
    return weight * mask_.view(shape);
  }

  const std::shared_ptr<SearchSpace::State> state;
  const int group;
  const int64_t factor;

 private:
  at::Tensor mask_ = at::empty({0});
  int64_t mask_keep_ = -1;
};

}  // namespace

FastNasMetadata trace_search_space(torch::nn::Module& model, const DummyForward& forward,
                                   const FastNasConfig& config) {
  const std::vector<nn::NamedDynamicLayer> layers = nn::named_dynamic_layers(model);
  const std::map<std::string, torch::nn::Module*> modules = modules_by_name(model);
  std::unordered_map<const Node*, int> producer_of;
  std::vector<std::vector<std::shared_ptr<Node>>> inputs(layers.size());
  std::vector<std::shared_ptr<Node>> outputs;
  std::vector<int64_t> positions(layers.size(), 0);
  Reach from_output;
  std::vector<Reach> reaches(layers.size());
  {
    ProbeGuard probes(layers);
    for (size_t i = 0; i < layers.size(); ++i) {
      layers[i].layer->add_transform(nn::Slot::kInput, kInputProbe,
                                     std::make_shared<ProbeImpl>([&inputs, i](const at::Tensor& x) {
                                       inputs[i].push_back(x.grad_fn());
                                     }));
      layers[i].layer->add_transform(
          nn::Slot::kOutput, kOutputProbe, std::make_shared<ProbeImpl>([&, i](const at::Tensor& y) {
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

void SearchSpace::install(torch::nn::Module& model, const FastNasMetadata& metadata) {
  const std::map<std::string, torch::nn::Module*> modules = modules_by_name(model);
  if (metadata.groups().empty()) throw ApplyModeError("fastnas: the metadata holds no width group");
  std::set<std::string> producers;
  std::set<std::string> consumers;
  for (const WidthGroup& group : metadata.groups()) {
    const Layer producer = find_layer(modules, group.producer());
    if (!producers.insert(group.producer()).second) {
      throw ApplyModeError(absl::StrCat("fastnas: layer '", group.producer(), "' heads two width groups"));
    }
    if (producer.out_width() != group.max_width() || group.choices().empty() ||
        group.choices(group.choices_size() - 1) != group.max_width() ||
        !std::is_sorted(group.choices().begin(), group.choices().end()) || group.choices(0) <= 0) {
      throw ApplyModeError(absl::StrCat("fastnas: layer '", group.producer(), "' has width ", producer.out_width(),
                                        ", the search space expects ", group.max_width(), " with widths ",
                                        absl::StrJoin(group.choices(), ", ")));
    }
    for (const Consumer& entry : group.consumers()) {
      const Layer consumer = find_layer(modules, entry.layer());
      if (!consumers.insert(entry.layer()).second) {
        throw ApplyModeError(absl::StrCat("fastnas: layer '", entry.layer(), "' reads two width groups"));
      }
      // Divide rather than multiply: the factor comes from the checkpoint, untrusted.
      if (entry.factor() <= 0 || consumer.in_width() % group.max_width() != 0 ||
          consumer.in_width() / group.max_width() != entry.factor()) {
        throw ApplyModeError(absl::StrCat("fastnas: layer '", entry.layer(), "' has ", consumer.in_width(),
                                          " inputs, the search space expects ", group.max_width(), " x ",
                                          entry.factor()));
      }
      if (consumer.dynamic->transform(kMaskName)) {
        throw ApplyModeError(absl::StrCat("fastnas: layer '", entry.layer(), "' has a search space already"));
      }
    }
    for (const std::string& name : group.batch_norms()) {
      if (find_batch_norm(modules, name).options->num_features() != group.max_width()) {
        throw ApplyModeError(absl::StrCat("fastnas: batch norm '", name, "' does not have ", group.max_width(),
                                          " features"));
      }
    }
  }
  auto state = std::make_shared<State>();
  state->metadata = metadata;
  state->metadata.clear_subnet_config();
  for (const WidthGroup& group : metadata.groups()) state->active.push_back(group.max_width());
  for (int g = 0; g < metadata.groups_size(); ++g) {
    const WidthGroup& group = metadata.groups(g);
    for (const Consumer& entry : group.consumers()) {
      find_layer(modules, entry.layer())
          .dynamic->add_transform(nn::Slot::kWeight, kMaskName,
                                  std::make_shared<WidthMaskImpl>(state, g, entry.factor()));
    }
  }
  SearchSpace(model).select(metadata.subnet_config());
}

SearchSpace::SearchSpace(torch::nn::Module& model) : model_(&model) {
  for (const auto& layer : nn::named_dynamic_layers(model)) {
    if (auto mask = std::dynamic_pointer_cast<WidthMaskImpl>(layer.layer->transform(kMaskName))) {
      state_ = mask->state;
      return;
    }
  }
  throw ApplyModeError("the model has no search space: apply the fastnas mode first");
}

const FastNasMetadata& SearchSpace::metadata() const { return state_->metadata; }

int64_t SearchSpace::num_groups() const { return state_->metadata.groups_size(); }

std::vector<int64_t> SearchSpace::widths() const { return state_->active; }

std::vector<int64_t> SearchSpace::max_widths() const {
  std::vector<int64_t> out;
  for (const WidthGroup& group : state_->metadata.groups()) out.push_back(group.max_width());
  return out;
}

void SearchSpace::set_widths(const std::vector<int64_t>& widths) {
  if (static_cast<int64_t>(widths.size()) != num_groups()) {
    throw ApplyModeError(absl::StrCat("fastnas: ", widths.size(), " widths for ", num_groups(), " groups"));
  }
  for (int g = 0; g < num_groups(); ++g) {
    const WidthGroup& group = state_->metadata.groups(g);
    if (std::find(group.choices().begin(), group.choices().end(), widths[g]) == group.choices().end()) {
      throw ApplyModeError(absl::StrCat("fastnas: width ", widths[g], " of layer '", group.producer(),
                                        "' is not one of ", absl::StrJoin(group.choices(), ", ")));
    }
  }
  state_->active = widths;
}

std::vector<LayerWidth> SearchSpace::subnet_config() const {
  std::vector<LayerWidth> out;
  for (int g = 0; g < num_groups(); ++g) {
    LayerWidth entry;
    entry.set_layer(state_->metadata.groups(g).producer());
    entry.set_width(state_->active[g]);
    out.push_back(std::move(entry));
  }
  return out;
}

void SearchSpace::select(const google::protobuf::RepeatedPtrField<LayerWidth>& subnet) {
  std::vector<int64_t> widths = max_widths();
  for (const LayerWidth& entry : subnet) {
    int g = 0;
    while (g < num_groups() && state_->metadata.groups(g).producer() != entry.layer()) ++g;
    if (g == num_groups()) {
      throw ApplyModeError(absl::StrCat("fastnas: the subnet names layer '", entry.layer(),
                                        "', which heads no width group of the search space"));
    }
    widths[g] = entry.width();
  }
  set_widths(widths);
}

int64_t SearchSpace::count_params(const std::vector<int64_t>& widths) const {
  const std::map<std::string, torch::nn::Module*> modules = modules_by_name(*model_);
  int64_t total = 0;
  for (const at::Tensor& p : model_->parameters()) total += p.numel();
  std::map<std::string, std::pair<int64_t, int64_t>> sizes;  // layer -> (out, in) active
  for (int g = 0; g < num_groups(); ++g) {
    const WidthGroup& group = state_->metadata.groups(g);
    const int64_t cut = group.max_width() - widths[g];
    sizes.emplace(group.producer(), std::make_pair(-1, -1)).first->second.first = widths[g];
    for (const Consumer& entry : group.consumers()) {
      sizes.emplace(entry.layer(), std::make_pair(-1, -1)).first->second.second = widths[g] * entry.factor();
    }
    for (const std::string& name : group.batch_norms()) {
      const BatchNorm norm = find_batch_norm(modules, name);
      total -= cut * ((norm.weight->defined() ? 1 : 0) + (norm.bias->defined() ? 1 : 0));
    }
  }
  for (const auto& [name, size] : sizes) {
    const Layer layer = find_layer(modules, name);
    const int64_t out = size.first < 0 ? layer.out_width() : size.first;
    const int64_t in = size.second < 0 ? layer.in_width() : size.second;
    total += layer.params(out, in) - layer.params(layer.out_width(), layer.in_width());
  }
  return total;
}

int64_t SearchSpace::count_macs(const std::vector<int64_t>& widths) const {
  const std::map<std::string, torch::nn::Module*> modules = modules_by_name(*model_);
  std::map<std::string, int64_t> out_width;
  std::map<std::string, int64_t> in_width;
  for (int g = 0; g < num_groups(); ++g) {
    const WidthGroup& group = state_->metadata.groups(g);
    out_width[group.producer()] = widths[g];
    for (const Consumer& entry : group.consumers()) in_width[entry.layer()] = widths[g] * entry.factor();
  }
  int64_t total = 0;
  for (const LayerPositions& entry : state_->metadata.positions()) {
    const Layer layer = find_layer(modules, entry.layer());
    const int64_t out = out_width.count(entry.layer()) ? out_width[entry.layer()] : layer.out_width();
    const int64_t in = in_width.count(entry.layer()) ? in_width[entry.layer()] : layer.in_width();
    total += out * (in / layer.groups()) * layer.kernel_area() * entry.positions();
  }
  return total;
}

void SearchSpace::sort_by_importance() {
  const std::map<std::string, torch::nn::Module*> modules = modules_by_name(*model_);
  at::NoGradGuard no_grad;
  for (const WidthGroup& group : state_->metadata.groups()) {
    const int64_t width = group.max_width();
    at::Tensor importance = at::zeros({width}, at::kDouble);
    for (const Consumer& entry : group.consumers()) {
      const at::Tensor w = find_layer(modules, entry.layer()).weight().to(at::kDouble);
      // [out, width * factor, ...] -> one sum of squares per channel.
      importance += w.reshape({w.size(0), width, -1}).pow(2).sum(at::IntArrayRef{0, 2});
    }
    std::vector<int64_t> order(width);
    std::iota(order.begin(), order.end(), 0);
    const auto* value = importance.data_ptr<double>();
    std::stable_sort(order.begin(), order.end(), [value](int64_t a, int64_t b) { return value[a] > value[b]; });
    const at::Tensor index = at::tensor(order, at::kLong);
    const Layer producer = find_layer(modules, group.producer());
    reorder(producer.weight(), 0, index);
    reorder(producer.bias(), 0, index);
    for (const std::string& name : group.batch_norms()) {
      for (at::Tensor* tensor : find_batch_norm(modules, name).per_channel()) reorder(*tensor, 0, index);
    }
    for (const Consumer& entry : group.consumers()) {
      reorder(find_layer(modules, entry.layer()).weight(), 1, feature_index(index, entry.factor()));
    }
  }
}

void SearchSpace::export_subnet() {
  const std::map<std::string, torch::nn::Module*> modules = modules_by_name(*model_);
  at::NoGradGuard no_grad;
  for (int g = 0; g < num_groups(); ++g) {
    const WidthGroup& group = state_->metadata.groups(g);
    const int64_t width = state_->active[g];
    const Layer producer = find_layer(modules, group.producer());
    keep_first(producer.weight(), 0, width);
    keep_first(producer.bias(), 0, width);
    producer.set_out_width(width);
    for (const std::string& name : group.batch_norms()) {
      BatchNorm norm = find_batch_norm(modules, name);
      for (at::Tensor* tensor : norm.per_channel()) keep_first(*tensor, 0, width);
      norm.options->num_features(width);
    }
    for (const Consumer& entry : group.consumers()) {
      const Layer consumer = find_layer(modules, entry.layer());
      keep_first(consumer.weight(), 1, width * entry.factor());
      consumer.set_in_width(width * entry.factor());
      consumer.dynamic->remove_transform(kMaskName);
    }
  }
}

}  // namespace nas
}  // namespace mto
