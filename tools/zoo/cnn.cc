#include "tools/zoo/cnn.h"

#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>

#include <stdexcept>

#include "opt/errors.h"
#include "opt/model_like.h"
#include "tools/zoo/model_args.h"

namespace mto {
namespace zoo {
namespace {

constexpr char kName[] = "fashion_cnn";
constexpr int64_t kSide = 28;
constexpr int64_t kClasses = 10;

}  // namespace

FashionCnnOptions FashionCnnOptions::from_json(const nlohmann::json& args) {
  check_arg_names(kName, args, {"channels", "hidden"});
  FashionCnnOptions options;
  options.channels(ints_arg(kName, args, "channels", options.channels()));
  options.hidden(int_arg(kName, args, "hidden", options.hidden()));
  return options;
}

FashionCnnImpl::FashionCnnImpl(FashionCnnOptions options_) : options(std::move(options_)) {
  const std::vector<int64_t>& channels = options.channels();
  if (channels.size() != 2) {
    throw ConfigError("argument 'channels' of model 'fashion_cnn' must hold 2 values, got " +
                      std::to_string(channels.size()));
  }
  for (int64_t width : channels) check_positive(kName, "channels", width);
  check_positive(kName, "hidden", options.hidden());
  // Two 2x2 max pools take 28x28 to 7x7.
  const int64_t flat = channels[1] * (kSide / 4) * (kSide / 4);
  conv1 = register_module("conv1",
                          mto::nn::Conv2d(mto::nn::Conv2dOptions(1, channels[0], 3).padding(1)));
  conv2 = register_module(
      "conv2", mto::nn::Conv2d(mto::nn::Conv2dOptions(channels[0], channels[1], 3).padding(1)));
  fc1 = register_module("fc1", mto::nn::Linear(flat, options.hidden()));
  fc2 = register_module("fc2", mto::nn::Linear(options.hidden(), kClasses));
}

at::Tensor FashionCnnImpl::forward(const at::Tensor& images) {
  if (images.dim() != 4 || images.size(1) != 1 || images.size(2) != kSide ||
      images.size(3) != kSide) {
    throw std::invalid_argument(
        c10::str("FashionCnn expects images [N, 1, 28, 28], got ", images.sizes()));
  }
  at::Tensor x = at::max_pool2d(at::relu(conv1->forward(images)), 2);
  x = at::max_pool2d(at::relu(conv2->forward(x)), 2);
  x = at::relu(fc1->forward(x.flatten(1)));
  return fc2->forward(x);
}

void FashionCnnImpl::pretty_print(std::ostream& stream) const { stream << "mto::zoo::FashionCnn"; }

MTO_REGISTER_MODEL(fashion_cnn,
                   [](const nlohmann::json& args) -> std::shared_ptr<torch::nn::Module> {
                     return std::make_shared<FashionCnnImpl>(FashionCnnOptions::from_json(args));
                   });

}  // namespace zoo
}  // namespace mto
