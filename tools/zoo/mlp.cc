#include "tools/zoo/mlp.h"

#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>
#include <c10/util/accumulate.h>

#include <stdexcept>
#include <string>

#include "opt/model_like.h"
#include "tools/zoo/model_args.h"

namespace mto {
namespace zoo {
namespace {

constexpr char kName[] = "fashion_mlp";
constexpr int64_t kPixels = 28 * 28;
constexpr int64_t kClasses = 10;

}  // namespace

FashionMlpOptions FashionMlpOptions::from_json(const nlohmann::json& args) {
  check_arg_names(kName, args, {"hidden"});
  FashionMlpOptions options;
  options.hidden(ints_arg(kName, args, "hidden", options.hidden()));
  return options;
}

FashionMlpImpl::FashionMlpImpl(FashionMlpOptions options_) : options(std::move(options_)) {
  int64_t in = kPixels;
  for (int64_t width : options.hidden()) {
    check_positive(kName, "hidden", width);
    layers.push_back(
        register_module("fc" + std::to_string(layers.size() + 1), mto::nn::Linear(in, width)));
    in = width;
  }
  layers.push_back(
      register_module("fc" + std::to_string(layers.size() + 1), mto::nn::Linear(in, kClasses)));
}

at::Tensor FashionMlpImpl::forward(const at::Tensor& images) {
  if (images.dim() < 2 || c10::multiply_integers(images.sizes().slice(1)) != kPixels) {
    throw std::invalid_argument(
        c10::str("FashionMlp expects images [N, 1, 28, 28] or [N, 784], got ", images.sizes()));
  }
  at::Tensor x = images.flatten(1);
  for (size_t i = 0; i + 1 < layers.size(); ++i) x = at::relu(layers[i]->forward(x));
  return layers.back()->forward(x);
}

void FashionMlpImpl::pretty_print(std::ostream& stream) const { stream << "mto::zoo::FashionMlp"; }

MTO_REGISTER_MODEL(fashion_mlp,
                   [](const nlohmann::json& args) -> std::shared_ptr<torch::nn::Module> {
                     return std::make_shared<FashionMlpImpl>(FashionMlpOptions::from_json(args));
                   });

}  // namespace zoo
}  // namespace mto
