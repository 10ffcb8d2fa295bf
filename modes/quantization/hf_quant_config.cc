#include "modes/quantization/hf_quant_config.h"

#include <algorithm>
#include <map>
#include <set>

#include "opt/version.h"

namespace mto {
namespace quantization {
namespace {

using ordered_json = nlohmann::ordered_json;

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// The per-layer keys of a quantized layer's config.
ordered_json layer_config(const ExportedLayer& layer) {
  ordered_json out;
  out["quant_algo"] = layer.quant_algo();
  if (layer.quant_algo() == "W4A16_AWQ") {
    out["group_size"] = layer.group_size();
    out["has_zero_point"] = false;
    out["pre_quant_scale"] = true;
  }
  return out;
}

// A config group of config.json's quantization_config for one per-layer config.
ordered_json config_group(const ordered_json& layer) {
  const std::string algo = layer["quant_algo"];
  auto numbers = [](int bits, const char* type) {
    return ordered_json{{"dynamic", false}, {"num_bits", bits}, {"type", type}};
  };
  ordered_json group;
  if (algo == "FP8") {
    group["input_activations"] = numbers(8, "float");
    group["weights"] = numbers(8, "float");
  } else if (algo == "W4A16_AWQ") {
    group["weights"] = numbers(4, "int");
    group["weights"]["group_size"] = layer["group_size"];
  } else {
    group["weights"] = numbers(8, "int");
    group["weights"]["strategy"] = "channel";
    if (algo == "W8A8_SQ_PER_CHANNEL") group["input_activations"] = numbers(8, "int");
  }
  return group;
}

}  // namespace

std::vector<std::string> summarize_excluded_modules(const std::vector<std::string>& excluded,
                                                    const std::vector<std::string>& quantized) {
  std::set<std::string> out;
  for (const std::string& name : excluded) {
    std::string pattern = name;
    for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', dot + 1)) {
      const std::string prefix = name.substr(0, dot + 1);
      if (std::none_of(quantized.begin(), quantized.end(),
                       [&](const std::string& q) { return starts_with(q, prefix); })) {
        pattern = prefix + "*";
        break;
      }
    }
    out.insert(pattern);
  }
  return {out.begin(), out.end()};
}

ordered_json hf_quant_config(const ExportQuantizeMetadata& metadata) {
  const std::map<std::string, ExportedLayer> layers(metadata.layers().begin(), metadata.layers().end());
  std::vector<std::string> excluded, quantized;
  std::set<std::string> configs;
  ordered_json quantized_layers = ordered_json::object();
  for (const auto& [name, layer] : layers) {
    if (layer.quant_algo().empty()) {
      excluded.push_back(name);
      continue;
    }
    quantized.push_back(name);
    quantized_layers[name] = layer_config(layer);
    configs.insert(quantized_layers[name].dump());
  }
  if (quantized.empty()) return nullptr;
  ordered_json quantization;
  if (configs.size() == 1) {
    const ordered_json config = quantized_layers[quantized.front()];
    for (const auto& [key, value] : config.items()) {
      quantization[key] = value;
      if (key == "quant_algo") quantization["kv_cache_quant_algo"] = nullptr;
    }
    quantization["exclude_modules"] = summarize_excluded_modules(excluded, quantized);
  } else {
    quantization["quant_algo"] = "MIXED_PRECISION";
    quantization["kv_cache_quant_algo"] = nullptr;
    quantization["quantized_layers"] = quantized_layers;
  }
  return ordered_json{{"producer", {{"name", "mto"}, {"version", kModeloptVersion}}},
                      {"quantization", quantization}};
}

ordered_json hf_quantization_config(const ordered_json& hf_quant_config) {
  const ordered_json& quantization = hf_quant_config.at("quantization");
  ordered_json out;
  out["quant_method"] = "modelopt";
  out["quant_algo"] = quantization.at("quant_algo");
  out["producer"] = hf_quant_config.at("producer");
  out["ignore"] = quantization.value("exclude_modules", ordered_json::array());
  if (quantization.at("quant_algo") == "FP8") {
    ordered_json group = config_group(quantization);
    group["targets"] = {"Linear"};
    out["config_groups"] = {{"group_0", group}};
  } else if (quantization.contains("quantized_layers")) {
    // One group per distinct layer config, naming its layers.
    std::map<std::string, std::vector<std::string>> targets;
    for (const auto& [name, layer] : quantization.at("quantized_layers").items()) targets[layer.dump()].push_back(name);
    ordered_json groups = ordered_json::object();
    for (const auto& [config, names] : targets) {
      ordered_json group = config_group(ordered_json::parse(config));
      group["targets"] = names;
      groups["group_" + std::to_string(groups.size())] = group;
    }
    out["config_groups"] = groups;
    out["quantized_layers"] = quantization.at("quantized_layers");
  }
  return out;
}

}  // namespace quantization
}  // namespace mto
