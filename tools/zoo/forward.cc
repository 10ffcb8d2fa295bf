#include "tools/zoo/forward.h"

#include <stdexcept>
#include <string>

#include "distributed/data_parallel.h"
#include "tools/zoo/cnn.h"
#include "tools/zoo/gpt.h"
#include "tools/zoo/mlp.h"

namespace mto {
namespace zoo {

namespace {

torch::nn::Module* unwrapped(torch::nn::Module& model) {
  if (auto* wrapper = dynamic_cast<DataParallelImpl*>(&model)) return wrapper->module().get();
  return &model;
}

}  // namespace

at::Tensor forward(torch::nn::Module& model, const at::Tensor& input) {
  torch::nn::Module* inner = unwrapped(model);
  if (auto* cnn = dynamic_cast<FashionCnnImpl*>(inner)) return cnn->forward(input);
  if (auto* mlp = dynamic_cast<FashionMlpImpl*>(inner)) return mlp->forward(input);
  if (auto* gpt = dynamic_cast<GptImpl*>(inner)) return gpt->forward(input);
  throw std::invalid_argument("mto::zoo::forward: " + inner->name() +
                              " is not a zoo model (FashionCnn, FashionMlp or Gpt)");
}

int64_t language_model_context(torch::nn::Module& model) {
  auto* gpt = dynamic_cast<GptImpl*>(unwrapped(model));
  if (gpt == nullptr) return 0;
  if (gpt->options.vocab() < kByteVocabulary) {
    throw std::invalid_argument("gpt: a vocab of " + std::to_string(gpt->options.vocab()) +
                                " cannot take the text's tokens, which are bytes: it needs at least " +
                                std::to_string(kByteVocabulary));
  }
  return gpt->options.context();
}

}  // namespace zoo
}  // namespace mto
