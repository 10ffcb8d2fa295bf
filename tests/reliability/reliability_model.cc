// The generation-stamped model of the reliability tests; see reliability_model.h.
#include "tests/reliability/reliability_model.h"

#include <ATen/ATen.h>

#include <cstring>
#include <map>

#include "opt/model_like.h"
#include "opt/state_dict.h"

namespace mto {
namespace reliability {
namespace {

constexpr int64_t kMatrixSide = 1024;  // one F32 matrix is 4 MB

class ReliabilityModel : public torch::nn::Module {
 public:
  explicit ReliabilityModel(int64_t megabytes) {
    for (int64_t i = 0; i < megabytes / 4; ++i) {
      register_parameter("w" + std::to_string(i), at::zeros({kMatrixSide, kMatrixSide}));
    }
    register_parameter("embedding", at::zeros({512, 256}, at::kBFloat16));
    register_buffer("step", at::zeros({3}, at::kLong));
    register_buffer("mask", at::zeros({1000}, at::kBool));
  }
};

MTO_REGISTER_MODEL(reliability_model, [](const nlohmann::json& args) -> std::shared_ptr<torch::nn::Module> {
  return std::make_shared<ReliabilityModel>(args.value("megabytes", kDefaultMegabytes));
});

}  // namespace

std::shared_ptr<torch::nn::Module> make_model(int64_t generation, int64_t megabytes) {
  std::shared_ptr<torch::nn::Module> model = ModelLike("reliability_model", {{"megabytes", megabytes}}).build();
  // Bytes of a 64-bit mix of (generation, tensor, position): every byte differs between
  // generations, and it is fast (a model is built for every trial).
  int64_t tensor = 0;
  for (const auto& t : model_state_dict(*model)) {
    const int64_t nbytes = static_cast<int64_t>(t.tensor.nbytes());
    at::Tensor x = at::arange((nbytes + 7) / 8, at::kLong) + (generation * 1000 + ++tensor) * (int64_t{1} << 40);
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
