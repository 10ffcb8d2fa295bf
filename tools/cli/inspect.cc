// mto inspect: what a checkpoint holds (model-like, mode chain, tensors), on one process;
// --verify checks every byte against the manifest.
#include <algorithm>
#include <iostream>
#include <map>
#include <memory>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/quantize_config.h"
#include "opt/checkpoint.h"
#include "opt/config.h"
#include "opt/model_like.h"
#include "opt/registry.h"
#include "tools/cli/commands.h"
#include "tools/cli/progress.h"

namespace mto {
namespace cli {
namespace {

using nlohmann::ordered_json;

struct InspectOptions {
  std::string checkpoint;
  bool json = false;
  bool verify = false;
  bool all_tensors = false;
};

// One mode entry of the state, readable.
struct ModeView {
  std::string mode;
  ordered_json config;
  ordered_json metadata;
  std::string summary;
};

// "8 of 12 quantizers enabled: 4 x int8 per-channel, 4 x int8 per-tensor".
std::string summarize_quantizers(const quantization::QuantizeMetadata& metadata) {
  std::map<std::string, int> formats;
  int enabled = 0, calibrated = 0;
  for (const auto& [name, state] : metadata.quantizer_state()) {
    const auto& a = state.attributes();
    if (!a.enable()) continue;
    ++enabled;
    calibrated += state.has_amax();
    std::string format = a.exponent_bits() > 0 ? absl::StrFormat("fp8 e%dm%d", a.exponent_bits(), a.mantissa_bits())
                                               : absl::StrFormat("%sint%d", a.is_unsigned() ? "u" : "", a.num_bits());
    if (a.block_size() > 0) {
      format += absl::StrFormat(" blocks of %d", a.block_size());
    } else {
      format += a.has_axis() ? " per-channel" : " per-tensor";
    }
    ++formats[format];
  }
  std::vector<std::string> parts;
  for (const auto& [format, count] : formats) parts.push_back(absl::StrFormat("%d x %s", count, format));
  return absl::StrFormat("%d of %d quantizers enabled, %d calibrated%s%s", enabled, metadata.quantizer_state_size(),
                         calibrated, parts.empty() ? "" : ": ", absl::StrJoin(parts, ", "));
}

ModeView view_mode(const ModeEntry& entry) {
  ModeView view;
  view.mode = entry.mode();
  if (!ModeRegistry::contains_in_any(entry.mode())) {
    view.summary = "(mode not known to this binary: " + entry.config().type_url() + ")";
    return view;
  }
  const auto descriptor = ModeRegistry::get_from_any(entry.mode());
  MessagePtr config, metadata;
  try {
    config = unpack_message(entry.config(), *descriptor->config_class(), "config of " + view.mode);
    metadata = unpack_message(entry.metadata(), *descriptor->metadata_class(), "metadata of " + view.mode);
  } catch (const ConfigError& e) {
    // A state this binary cannot restore (e.g. written by a newer version) is still shown:
    // inspecting it is how a user finds out why.
    view.summary = absl::StrCat("(cannot read it: ", e.what(), ")");
    return view;
  }
  view.config = ordered_json::parse(descriptor->config_to_json(*config));
  view.metadata = ordered_json::parse(message_to_json(*metadata));
  if (const auto* quantizers = dynamic_cast<const quantization::QuantizeMetadata*>(metadata.get())) {
    view.summary = summarize_quantizers(*quantizers);
  } else {
    const std::string text = view.metadata.dump();
    view.summary = text.size() <= 100 ? "metadata " + text : absl::StrFormat("%d bytes of metadata (see --json)", text.size());
  }
  return view;
}

// `value` as compact JSON where it fits in `width` columns after the `used` ones of its line;
// otherwise an object or array with one entry per line, indented by `indent` + 2 spaces (its
// closing bracket by `indent`), each entry wrapped the same way.
std::string wrapped_json(const ordered_json& value, size_t indent, size_t used, size_t width) {
  const std::string compact = value.dump();
  if (used + compact.size() <= width || !value.is_structured() || value.empty()) return compact;
  const std::string inner(indent + 2, ' ');
  std::string out = value.is_object() ? "{\n" : "[\n";
  size_t i = 0;
  for (auto it = value.begin(); it != value.end(); ++it, ++i) {
    std::string line = inner;
    if (value.is_object()) line += ordered_json(it.key()).dump() + ": ";
    line += wrapped_json(*it, indent + 2, line.size(), width);
    out += line + (i + 1 < value.size() ? ",\n" : "\n");
  }
  return out + std::string(indent, ' ') + (value.is_object() ? "}" : "]");
}

std::string shape_text(const TensorRecord& record) {
  return "[" + absl::StrJoin(record.shape(), ", ") + "]";
}

// The mesh the checkpoint was written on: "(dp=2, tp=2)"; version 1 knew no splits.
std::string mesh_text(const Manifest& manifest) {
  if (manifest.format_version() < 2) return "replicated on every rank (layout version 1)";
  const int tp = std::max(1, manifest.tensor_parallel_size());
  return absl::StrFormat("(dp=%d, tp=%d)", manifest.world_size() / tp, tp);
}

// How the saving ranks held a tensor: "whole", or "dim 0 / 4" for 4 slices along dim 0.
std::string split_text(const TensorRecord& record) {
  if (record.split_parts() <= 1) return "whole";
  return absl::StrFormat("dim %d / %d", record.split_dim(), record.split_parts());
}

// The width the text output keeps its mode configs within, where it can.
constexpr size_t kTextWidth = 100;

void print_text(const InspectOptions& options, const CheckpointContents& contents,
                const std::vector<ModeView>& modes) {
  const Manifest& manifest = contents.manifest;
  std::cout << absl::StrFormat("checkpoint   %s\n", options.checkpoint)
            << absl::StrFormat("written by   mto %s on %d rank(s), layout version %d, modelopt %s\n",
                               manifest.mto_version(), manifest.world_size(), manifest.format_version(),
                               contents.state.modelopt_version());
  if (contents.state.has_model_like()) {
    const ModelLike like = ModelLike::from_proto(contents.state.model_like());
    std::cout << absl::StrFormat("model-like   %s %s\n", like.factory, like.args.dump());
  } else {
    std::cout << "model-like   (none: restore into your own model)\n";
  }
  std::cout << absl::StrFormat("mesh         %s\n", mesh_text(manifest));
  std::cout << absl::StrFormat("modes        %d\n", modes.size());
  for (size_t i = 0; i < modes.size(); ++i) {
    std::cout << absl::StrFormat("  %d. %s\n", i + 1, modes[i].mode);
    if (!modes[i].config.is_null()) {
      const std::string label = "     config   ";
      std::cout << label << wrapped_json(modes[i].config, 5, label.size(), kTextWidth) << "\n";
    }
    std::cout << "     " << modes[i].summary << "\n";
  }
  uint64_t total = 0;
  size_t name_width = 4;
  for (const auto& record : manifest.tensors()) {
    total += record.length();
    name_width = std::max(name_width, record.name().size());
  }
  std::cout << absl::StrFormat("tensors      %d in %d shard(s), %d bytes (%.1f MiB)\n", manifest.tensors_size(),
                               manifest.shards_size(), total, total / 1048576.0);
  const int extra = static_cast<int>(std::count_if(manifest.tensors().begin(), manifest.tensors().end(),
                                                   [](const TensorRecord& r) { return r.extra(); }));
  if (extra > 0) {
    std::cout << absl::StrFormat("             %d of them saved beside the model (extra: a training checkpoint's "
                                 "optimizer state), which a model restore skips\n",
                                 extra);
  }
  // "file": the number of the shard file (model-0000N-of-...) that holds the tensor.
  std::cout << absl::StrFormat("  %-*s  %-5s  %-18s  %-10s  %5s  %12s\n", name_width, "name", "dtype", "shape",
                               "split", "file", "bytes");
  const int limit = options.all_tensors ? manifest.tensors_size() : std::min(manifest.tensors_size(), 40);
  for (int i = 0; i < limit; ++i) {
    const TensorRecord& record = manifest.tensors(i);
    std::cout << absl::StrFormat("  %-*s  %-5s  %-18s  %-10s  %5d  %12d\n", name_width, record.name(),
                                 record.dtype(), shape_text(record), split_text(record), record.shard() + 1,
                                 record.length());
  }
  if (limit < manifest.tensors_size()) {
    std::cout << absl::StrFormat("  ... %d more (--all)\n", manifest.tensors_size() - limit);
  }
}

ordered_json to_json(const InspectOptions& options, const CheckpointContents& contents,
                     const std::vector<ModeView>& modes) {
  const Manifest& manifest = contents.manifest;
  ordered_json out = {{"checkpoint", options.checkpoint},
                      {"mto_version", manifest.mto_version()},
                      {"modelopt_version", contents.state.modelopt_version()},
                      {"world_size", manifest.world_size()},
                      {"mesh", mesh_text(manifest)}};
  if (contents.state.has_model_like()) {
    const ModelLike like = ModelLike::from_proto(contents.state.model_like());
    out["model_like"] = {{"factory", like.factory}, {"args", like.args}};
  } else {
    out["model_like"] = nullptr;
  }
  out["modes"] = ordered_json::array();
  for (const ModeView& mode : modes) {
    out["modes"].push_back({{"mode", mode.mode}, {"config", mode.config}, {"metadata", mode.metadata}});
    if (mode.config.is_null()) out["modes"].back()["note"] = mode.summary;
  }
  out["tensors"] = ordered_json::array();
  uint64_t total = 0;
  for (const auto& record : manifest.tensors()) {
    total += record.length();
    out["tensors"].push_back({{"name", record.name()},
                              {"dtype", record.dtype()},
                              {"shape", std::vector<int64_t>(record.shape().begin(), record.shape().end())},
                              {"split", split_text(record)},
                              {"file", manifest.shards(record.shard()).file()},
                              {"bytes", record.length()},
                              {"extra", record.extra()}});
  }
  out["total_bytes"] = total;
  return out;
}

void run_inspect(const InspectOptions& options) {
  // A one-process command: under mpirun, rank 0 alone reads and prints, and the other ranks
  // leave at once with status 0. Were they to inspect too, each would print (and verify) the
  // whole checkpoint, and one leaving non-zero on a bad checkpoint would have mpirun kill
  // rank 0 before it reported the error.
  if (!is_first_rank()) return;
  const CheckpointContents contents = read_checkpoint_contents(options.checkpoint);
  std::vector<ModeView> modes;
  for (const ModeEntry& entry : contents.state.modelopt_state_dict()) modes.push_back(view_mode(entry));
  ordered_json json;
  if (options.json) {
    json = to_json(options, contents, modes);
  } else {
    print_text(options, contents, modes);
  }
  if (options.verify) {
    uint64_t total = 0;
    for (const auto& record : contents.manifest.tensors()) total += record.length();
    Progress progress("verify", static_cast<int64_t>(total), "bytes", !options.json);
    verify_checkpoint(options.checkpoint,
                      [&](uint64_t done, uint64_t) { progress.update(static_cast<int64_t>(done)); });
    if (options.json) {
      json["verified"] = true;
    } else {
      progress.finish();
      std::cout << absl::StrFormat("verified     every checksum matches (%d bytes of tensors)\n", total);
    }
  }
  if (options.json) std::cout << json.dump(2) << "\n";
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto options = std::make_shared<InspectOptions>();
  CLI::App* command = app.add_subcommand(
      "inspect", "Show what a checkpoint holds: model-like, mode chain, tensors (one process; under mpirun, rank 0 alone)");
  command->add_option("checkpoint", options->checkpoint, "Checkpoint directory")->required();
  command->add_flag("--json", options->json, "Print JSON instead of text");
  command->add_flag("--verify", options->verify, "Read every byte and check it against the manifest's checksums");
  command->add_flag("--all", options->all_tensors, "List every tensor (the text form lists the first 40)");
  command->callback([options] { run_inspect(*options); });
}

}  // namespace cli
}  // namespace mto
