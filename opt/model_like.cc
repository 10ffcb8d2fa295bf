#include "opt/model_like.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "opt/errors.h"
#include "opt/state_holder.h"
#include "opt/state_manager.h"

namespace mto {
namespace {

struct Factories {
  absl::Mutex mu;
  std::map<std::string, ModelFactory> map ABSL_GUARDED_BY(mu);
};

Factories& factories() {
  static Factories* f = new Factories;
  return *f;
}

}  // namespace

void register_model_factory(const std::string& name, ModelFactory factory) {
  Factories& f = factories();
  absl::MutexLock lock(&f.mu);
  if (!f.map.emplace(name, std::move(factory)).second) {
    throw ModeError(absl::StrCat("Model factory '", name, "' is already registered."));
  }
}

std::vector<std::string> model_factory_names() {
  Factories& f = factories();
  absl::MutexLock lock(&f.mu);
  std::vector<std::string> out;
  for (const auto& [name, factory] : f.map) out.push_back(name);
  return out;
}

std::shared_ptr<torch::nn::Module> ModelLike::build() const {
  ModelFactory factory;
  {
    Factories& f = factories();
    absl::MutexLock lock(&f.mu);
    auto it = f.map.find(this->factory);
    if (it == f.map.end()) {
      std::vector<std::string> known;
      for (const auto& [name, fn] : f.map) known.push_back(name);
      throw ModeError(absl::StrCat("Unknown model '", this->factory, "'. Registered models: ",
                                   known.empty() ? "none" : absl::StrJoin(known, ", "), "."));
    }
    factory = it->second;
  }
  std::shared_ptr<torch::nn::Module> model = factory(args);
  if (!model) throw ModeError(absl::StrCat("Model factory '", this->factory, "' returned no model."));
  attach_state_holder(*model)->model_like = *this;
  return model;
}

ModelLikeProto ModelLike::to_proto() const {
  ModelLikeProto proto;
  proto.set_factory(factory);
  proto.set_args_json(args.dump());
  return proto;
}

ModelLike ModelLike::from_proto(const ModelLikeProto& proto) {
  nlohmann::json args = nlohmann::json::object();
  if (!proto.args_json().empty()) {
    try {
      args = nlohmann::json::parse(proto.args_json());
    } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for 1e999
      throw ConfigError(absl::StrCat("arguments of model '", proto.factory(),
                                     "' are not valid JSON: ", e.what()));
    }
  }
  if (!args.is_object()) {
    throw ConfigError(absl::StrCat("arguments of model '", proto.factory(),
                                   "' are not a JSON object: ", proto.args_json()));
  }
  return ModelLike(proto.factory(), std::move(args));
}

ModelLikeModule::ModelLikeModule(ModelLike model_like)
    : torch::nn::Module("mto::ModelLikeModule"), model_like_(std::move(model_like)) {
  attach_state_holder(*this)->model_like = model_like_;
}

std::shared_ptr<torch::nn::Module> ModelLikeModule::init_modellike() {
  std::shared_ptr<torch::nn::Module> model = model_like_.build();
  if (ModeloptStateManager::is_converted(*this)) {
    ModeloptStateManager::transfer_state_dict(*this, *model);
  }
  return model;
}

}  // namespace mto
