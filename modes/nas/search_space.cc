#include "modes/nas/search_space.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "modes/nas/batch_norm.h"
#include "modes/nas/layers.h"
#include "opt/errors.h"
#include "opt/nn/dynamic_layer.h"

namespace mto {
namespace nas {

// The search space shared by the masks of one model.
struct SearchSpace::State {
  FastNasMetadata metadata;
  std::vector<int64_t> active;
};

namespace {

// The name under which a consumer holds its input-channel mask.
constexpr char kMaskName[] = "nas_width_mask";

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

void SearchSpace::install(torch::nn::Module& model, const FastNasMetadata& metadata) {
  const ModulesByName modules = modules_by_name(model);
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
  const ModulesByName modules = modules_by_name(*model_);
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
  const ModulesByName modules = modules_by_name(*model_);
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
  const ModulesByName modules = modules_by_name(*model_);
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
  const ModulesByName modules = modules_by_name(*model_);
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
