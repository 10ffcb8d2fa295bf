#include "tests/modes/nas/test_models.h"

namespace mto {
namespace nas {
namespace test {
namespace {

MTO_REGISTER_MODEL(nas_test_cnn, [](const nlohmann::json& args) -> std::shared_ptr<torch::nn::Module> {
  at::manual_seed(args.value("seed", 0));
  return std::make_shared<TestCnnImpl>(args.value("batch_norm", false));
});

MTO_REGISTER_MODEL(nas_test_residual, [](const nlohmann::json& args) -> std::shared_ptr<torch::nn::Module> {
  at::manual_seed(args.value("seed", 0));
  return std::make_shared<TestResidualImpl>();
});

}  // namespace
}  // namespace test
}  // namespace nas
}  // namespace mto
