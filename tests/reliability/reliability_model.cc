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
      // Uninitialized: make_model or a restore writes every byte.
      register_parameter("w" + std::to_string(i), at::empty(shape));
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

// The 64-bit mix of word `word` of a tensor under `key` (the generation and the tensor).
uint64_t mix(int64_t word, int64_t key) {
  uint64_t x = static_cast<uint64_t>(word + key) * 0x9E3779B97F4A7C15ull;
  x ^= static_cast<uint64_t>(static_cast<int64_t>(x) >> 31);
  x *= 0xBF58476D1CE4E5B9ull;
  return x ^ static_cast<uint64_t>(static_cast<int64_t>(x) >> 29);
}

// Fills `t` in place, in one pass (no temporaries: a trial builds three models), with the
// mixes of its words' indices in the global tensor's row-major bytes; a BOOL tensor gets the
// low bit of each byte.
void fill(const StateTensor& t, int64_t key) {
  auto* out = static_cast<uint8_t*>(t.tensor.data_ptr());
  const int64_t nbytes = static_cast<int64_t>(t.tensor.nbytes());
  if (t.tensor.scalar_type() == at::kBool) {
    for (int64_t i = 0; i < nbytes; ++i) out[i] = (mix(i / 8, key) >> (8 * (i % 8))) & 1;
    return;
  }
  // A split tensor is an F32 matrix: a row of it holds cols / 2 words of the global row.
  const int64_t rows = t.slice ? t.tensor.size(0) : 1;
  const int64_t row_bytes = nbytes / rows;
  const int64_t global_row_words = t.slice ? t.slice->global_shape[1] / 2 : 0;
  const int64_t row0 = t.slice && t.slice->dim == 0 ? t.slice->offset : 0;
  const int64_t word0 = t.slice && t.slice->dim == 1 ? t.slice->offset / 2 : 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t first = (row0 + r) * global_row_words + word0;
    uint8_t* row = out + r * row_bytes;
    const int64_t whole = row_bytes / 8;
    for (int64_t w = 0; w < whole; ++w) {
      const uint64_t x = mix(first + w, key);
      std::memcpy(row + 8 * w, &x, 8);
    }
    const uint64_t tail = mix(first + whole, key);
    std::memcpy(row + 8 * whole, &tail, row_bytes % 8);
  }
}

}  // namespace

std::shared_ptr<torch::nn::Module> make_model(int64_t generation, int64_t megabytes) {
  std::shared_ptr<torch::nn::Module> model = ModelLike("reliability_model", {{"megabytes", megabytes}}).build();
  // Bytes of a 64-bit mix of (generation, tensor, position): every byte differs between
  // generations. Positions are global, so a split model holds the slices of the unsplit one.
  int64_t tensor = 0;
  for (const auto& t : model_state_slices(*model)) fill(t, (generation * 1000 + ++tensor) * (int64_t{1} << 40));
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
