#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include "serialization/modelopt_state.pb.h"

namespace mto {

// Builds a model from JSON arguments.
using ModelFactory =
    std::function<std::shared_ptr<torch::nn::Module>(const nlohmann::json& args)>;

// A model given by the name of a registered factory and its arguments: built lazily, and
// recorded in the modelopt state so that a checkpoint restores with no user code.
struct ModelLike {
  ModelLike(std::string factory, nlohmann::json args = nlohmann::json::object())
      : factory(std::move(factory)), args(std::move(args)) {}

  std::string factory;
  nlohmann::json args;

  // Builds the model with the registered factory and records this model-like on it.
  // Throws ModeError if no factory has that name; a factory's own exceptions pass through.
  std::shared_ptr<torch::nn::Module> build() const;

  // The protobuf form stored in the modelopt state (args as canonical JSON).
  mto::ModelLikeProto to_proto() const;
  // Parses the protobuf form; throws ConfigError if args_json is not a JSON object.
  static ModelLike from_proto(const mto::ModelLikeProto& proto);
};

// Registers `factory` under `name`; throws ModeError if the name is taken.
void register_model_factory(const std::string& name, ModelFactory factory);

// Names of the registered factories, sorted.
std::vector<std::string> model_factory_names();

// Registers a model factory at static-initialization time:
//   MTO_REGISTER_MODEL(mlp, [](const nlohmann::json& args) { return ...; });
#define MTO_REGISTER_MODEL(name, ...)                                                  \
  static const bool MTO_MODEL_REGISTRATION_NAME_(mto_model_registration_, __COUNTER__) = \
      (::mto::register_model_factory(#name, __VA_ARGS__), true)
#define MTO_MODEL_REGISTRATION_CONCAT_(a, b) a##b
#define MTO_MODEL_REGISTRATION_NAME_(a, b) MTO_MODEL_REGISTRATION_CONCAT_(a, b)

// Stands for a model-like that is not built yet. apply_mode and restore hand it to modes
// whose require_model_like() is true, and build it before any other mode. It holds the
// modelopt state until then.
class ModelLikeModule : public torch::nn::Module {
 public:
  explicit ModelLikeModule(ModelLike model_like);

  const ModelLike& model_like() const { return model_like_; }

  // Builds the model and moves this module's modelopt state onto it.
  std::shared_ptr<torch::nn::Module> init_modellike();

 private:
  ModelLike model_like_;
};

}  // namespace mto
