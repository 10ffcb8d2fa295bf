// The generation-stamped model of the reliability tests; see reliability_model.h.
#include "tests/reliability/reliability_model.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>
#include <map>

#include "distributed/mesh.h"
#include "distributed/world.h"
#include "distributed/tensor_slice.h"
#include "opt/checkpoint.h"
#include "opt/model_like.h"
#include "opt/save_async.h"
#include "opt/state_dict.h"

namespace mto {
namespace reliability {
namespace {

// One F32 matrix is about 4 MB; both sides divide by 2, 3 and 4, and so do a third and a
// quarter of the columns by 2 (make_model hashes 8-byte words).
constexpr int64_t kRows = 1152;
constexpr int64_t kCols = 912;

// The matrices are split over the tensor-parallel group of the default mesh (rows of the
// even ones, columns of the odd ones), so that the same scripts exercise split saves when
// the worker makes a mesh; at tp = 1 every rank holds everything.
class ReliabilityModel : public torch::nn::Module, public SplitModule {
 public:
  ReliabilityModel(int64_t megabytes, std::shared_ptr<Communicator> group) : group_(std::move(group)) {
    for (int64_t i = 0; i < megabytes / 4; ++i) {
      std::vector<int64_t> shape = {kRows, kCols};
      shape[i % 2] /= group_->world_size();
      register_parameter("w" + std::to_string(i), at::zeros(shape));
    }
    register_parameter("embedding", at::zeros({512, 256}, at::kBFloat16));
    register_buffer("step", at::zeros({3}, at::kLong));
    register_buffer("mask", at::zeros({1000}, at::kBool));
  }

  std::optional<TensorSlice> slice_of(const std::string& key, const at::Tensor& local) const override {
    if (key.empty() || key[0] != 'w') return std::nullopt;
    const int64_t dim = std::stoll(key.substr(1)) % 2;
    return TensorSlice{{kRows, kCols}, dim, group_->rank() * local.size(dim)};
  }
  const std::shared_ptr<Communicator>& split_group() const override { return group_; }

 private:
  std::shared_ptr<Communicator> group_;
};

MTO_REGISTER_MODEL(reliability_model, [](const nlohmann::json& args) -> std::shared_ptr<torch::nn::Module> {
  return std::make_shared<ReliabilityModel>(args.value("megabytes", kDefaultMegabytes), default_mesh()->tp());
});

// Indices of the 8-byte words of `t` in its global tensor's row-major bytes.
at::Tensor global_words(const StateTensor& t) {
  const int64_t words = (static_cast<int64_t>(t.tensor.nbytes()) + 7) / 8;
  if (!t.slice) return at::arange(words, at::kLong);
  const int64_t cols = t.slice->global_shape[1], local_cols = t.tensor.size(1);
  const int64_t row0 = t.slice->dim == 0 ? t.slice->offset : 0;
  const int64_t col0 = t.slice->dim == 1 ? t.slice->offset : 0;
  const at::Tensor rows = (at::arange(t.tensor.size(0), at::kLong) + row0).mul(cols / 2).unsqueeze(1);
  return (rows + col0 / 2 + at::arange(local_cols / 2, at::kLong).unsqueeze(0)).reshape({-1});
}

}  // namespace

std::shared_ptr<torch::nn::Module> make_model(int64_t generation, int64_t megabytes) {
  std::shared_ptr<torch::nn::Module> model = ModelLike("reliability_model", {{"megabytes", megabytes}}).build();
  // Bytes of a 64-bit mix of (generation, tensor, position): every byte differs between
  // generations, and it is fast (a model is built for every trial).
  // Positions are global, so a split model holds the slices of the unsplit one.
  int64_t tensor = 0;
  for (const auto& t : model_state_slices(*model)) {
    const int64_t nbytes = static_cast<int64_t>(t.tensor.nbytes());
    at::Tensor x = global_words(t) + (generation * 1000 + ++tensor) * (int64_t{1} << 40);
    x.mul_(static_cast<int64_t>(0x9E3779B97F4A7C15ull));
    x.bitwise_xor_(x.__rshift__(31));
    x.mul_(static_cast<int64_t>(0xBF58476D1CE4E5B9ull));
    x.bitwise_xor_(x.__rshift__(29));
    if (t.tensor.scalar_type() == at::kBool) {
      const at::Tensor bits = x.view(at::kByte).narrow(0, 0, nbytes).bitwise_and(1);
      std::memcpy(t.tensor.data_ptr(), bits.data_ptr(), nbytes);
    } else {
      std::memcpy(t.tensor.data_ptr(), x.data_ptr(), nbytes);
    }
  }
  return model;
}

void use_split_model_from_env() {
  const char* split = std::getenv("MTO_TEST_SPLIT");
  if (split != nullptr && std::string(split) == "1") set_default_mesh(Mesh::create(world(), world()->world_size()));
}

void save_generation(torch::nn::Module& model, const std::string& dir) {
  const char* async = std::getenv("MTO_TEST_ASYNC");
  if (async == nullptr || std::string(async) != "1") {
    save(model, dir);
    return;
  }
  std::vector<at::Tensor> tensors;
  std::vector<at::Tensor> originals;
  for (const auto& t : model_state_dict(model)) {
    tensors.push_back(t.tensor);
    originals.push_back(t.tensor.clone());
  }
  SaveHandle handle = save_async(model, dir);
  torch::NoGradGuard no_grad;
  for (auto& t : tensors) t.view({-1}).view(at::kByte).bitwise_not_();  // every bit flipped
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].copy_(originals[i]);
  handle.wait();
}

std::string weight_difference(const torch::nn::Module& a, const torch::nn::Module& b) {
  std::map<std::string, at::Tensor> others;
  for (const auto& t : model_state_dict(b)) others[t.name] = t.tensor;
  for (const auto& t : model_state_dict(a)) {
    auto it = others.find(t.name);
    if (it == others.end()) return t.name + " (missing)";
    const at::Tensor& o = it->second;
    if (o.scalar_type() != t.tensor.scalar_type() || !o.sizes().equals(t.tensor.sizes()) ||
        std::memcmp(o.data_ptr(), t.tensor.data_ptr(), o.nbytes()) != 0) {
      return t.name;
    }
    others.erase(it);
  }
  return others.empty() ? "" : others.begin()->first + " (extra)";
}

}  // namespace reliability
}  // namespace mto
