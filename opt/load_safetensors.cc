#include "opt/load_safetensors.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <filesystem>
#include <map>
#include <memory>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "opt/save_async.h"
#include "opt/state_dict.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_reader.h"
#include "serialization/file.h"
#include "serialization/ordered_work.h"
#include "serialization/read_ranges.h"
#include "serialization/safetensors.h"
#include "serialization/safetensors_set.h"

namespace mto {
namespace {

std::string shape_text(at::IntArrayRef shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

// `name` after every rule, in order, whose prefix it starts with; marks the rules that apply.
std::string renamed(std::string name, const LoadSafetensorsOptions& options, std::vector<bool>& applied) {
  for (size_t i = 0; i < options.rename_prefixes.size(); ++i) {
    const auto& [from, to] = options.rename_prefixes[i];
    if (name.compare(0, from.size(), from) != 0) continue;
    name = to + name.substr(from.size());
    applied[i] = true;
  }
  return name;
}

// `part`, read from `location` for the model tensor `name`, in the dtype `wanted`. Throws
// CheckpointError if the cast would turn a finite value into an infinity (F64 beyond
// float32's range, BF16 beyond float16's); a cast into a wider type cannot, and is not
// checked.
at::Tensor cast_checked(const at::Tensor& part, c10::ScalarType wanted, const std::string& name,
                        const SafetensorsLocation& location, bool slice) {
  const c10::ScalarType source = part.scalar_type();
  if (!at::isFloatingType(source) || source == wanted || c10::elementSize(wanted) > c10::elementSize(source)) {
    return part;
  }
  const at::Tensor cast = part.to(wanted);
  const at::Tensor overflow = at::isfinite(part).logical_and_(at::isfinite(cast).logical_not_());
  if (!overflow.any().item<bool>()) return cast;
  const int64_t index = overflow.flatten().nonzero()[0].item<int64_t>();
  throw CheckpointError(absl::StrCat(
      "cannot load ", location.entry.name, " of ", location.file, " into ", name, ": its ",
      location.entry.dtype, " value ", part.flatten()[index].item<double>(), " (flat index ", index,
      slice ? " of this rank's slice" : "", ") lies beyond the range of ", c10::toString(wanted)));
}

// Reads the part of the tensor at `location` that `target` holds (all of it, or the slice)
// into a tensor of the source dtype shaped like `target`; returns it and counts the bytes.
at::Tensor read_part(const File& file, const SafetensorsLocation& location, const StateTensor& target,
                     c10::ScalarType source, uint64_t* bytes_read) {
  const std::vector<int64_t>& global = location.entry.shape;
  at::Tensor out = at::empty(target.tensor.sizes(), at::TensorOptions().dtype(source));
  const uint64_t element = c10::elementSize(source);
  const uint64_t first = location.data_begin + location.entry.begin;
  auto* data = static_cast<char*>(out.data_ptr());
  if (!target.slice) {
    const uint64_t size = out.numel() * element;
    if (size > 0) file.read_at(data, size, first);
    *bytes_read += size;
    return out;
  }
  // [outer, size along the split dimension, inner]: each outer index is one run of bytes.
  const int64_t dim = target.slice->dim;
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= global[d];
  for (size_t d = dim + 1; d < global.size(); ++d) inner *= global[d];
  const int64_t length = target.tensor.size(dim);
  const uint64_t run = static_cast<uint64_t>(length * inner) * element;
  std::vector<ReadRange> runs;
  for (int64_t i = 0; i < outer && run > 0; ++i) {
    const uint64_t from = first + static_cast<uint64_t>((i * global[dim] + target.slice->offset) * inner) * element;
    runs.push_back({data + i * run, run, from});
  }
  read_ranges(file, runs);  // many runs to a system call, as a restore reads them
  *bytes_read += run * outer;
  return out;
}

}  // namespace

LoadSafetensorsReport load_safetensors(torch::nn::Module& model, const std::string& dir,
                                       const LoadSafetensorsOptions& options) {
  finish_save_in_flight();  // which may be writing `dir`
  const std::map<std::string, SafetensorsLocation> set = read_safetensors_set(dir);
  std::map<std::string, const SafetensorsLocation*> sources;
  std::vector<bool> applied(options.rename_prefixes.size(), false);
  for (const auto& [name, location] : set) {
    const std::string mapped = renamed(name, options, applied);
    auto [it, inserted] = sources.emplace(mapped, &location);
    if (!inserted) {
      throw CheckpointError(absl::StrCat(dir, ": tensors ", it->second->entry.name, " and ", name,
                                         " both map to ", mapped));
    }
  }

  // Check everything before changing anything.
  const std::vector<StateTensor> tensors = model_state_slices(model);
  // What to read into each tensor: where, and in which dtype it is stored.
  struct Read {
    const StateTensor* target;
    const SafetensorsLocation* location;
    c10::ScalarType source;
  };
  std::vector<Read> plan;
  std::vector<std::string> missing, mismatched;
  std::set<std::string> used;
  for (const StateTensor& t : tensors) {
    auto it = sources.find(t.name);
    if (it == sources.end()) {
      missing.push_back(t.name);
      continue;
    }
    used.insert(t.name);
    const SafetensorsEntry& entry = it->second->entry;
    const std::vector<int64_t> global = t.slice ? t.slice->global_shape : t.tensor.sizes().vec();
    const c10::ScalarType source = scalar_type_from_safetensors(entry.dtype, it->second->file);
    const c10::ScalarType wanted = t.tensor.scalar_type();
    if (entry.shape != global) {
      mismatched.push_back(absl::StrCat(t.name, " is ", shape_text(entry.shape), " in ", it->second->file,
                                        ", the model's is ", shape_text(global)));
    } else if (!(at::isFloatingType(source) && at::isFloatingType(wanted)) &&
               !dtype_holds(entry.dtype, wanted)) {
      // Only floating sources are cast: FP8 codes go into uint8 tensors alone, since a cast
      // into a float tensor would take each code for an integer.
      mismatched.push_back(absl::StrCat(t.name, " is ", entry.dtype, " in ", it->second->file,
                                        ", the model's is ", c10::toString(wanted)));
    } else {
      plan.push_back({&t, it->second, source});
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& [name, location] : sources) {
    if (!used.count(name)) unexpected.push_back(name == location->entry.name ? name : name + " (from " + location->entry.name + ")");
  }
  std::vector<std::string> problems;
  if (!missing.empty() && !options.allow_missing) {
    problems.push_back(absl::StrCat("missing from the set: ", absl::StrJoin(missing, ", ")));
  }
  if (!unexpected.empty()) problems.push_back(absl::StrCat("unexpected (the model has no such tensor): ",
                                                           absl::StrJoin(unexpected, ", ")));
  if (!mismatched.empty()) problems.push_back(absl::StrCat("mismatched: ", absl::StrJoin(mismatched, "; ")));
  if (plan.empty() && !tensors.empty() && problems.empty()) problems.push_back("it holds no tensors");
  if (!problems.empty()) {
    std::string hint;
    if (std::filesystem::exists(std::filesystem::path(dir) / "hf_quant_config.json")) {
      hint = absl::StrCat(" (", dir, " holds hf_quant_config.json: it is a quantized export, whose weights are ",
                          "integer codes with scales, and an import reads float weights; an mto export restores ",
                          "and evaluates as it is)");
    }
    throw CheckpointError(absl::StrCat("cannot load the safetensors set ", dir, " into the model: ",
                                       absl::StrJoin(problems, "; "), hint));
  }

  LoadSafetensorsReport report;
  report.missing = missing;
  for (size_t i = 0; i < applied.size(); ++i) {
    if (!applied[i]) report.unused_renames.push_back(options.rename_prefixes[i]);
  }
  std::map<std::string, std::unique_ptr<File>> files;
  uint64_t tensor_bytes = 0;
  for (const Read& read : plan) {
    std::unique_ptr<File>& file = files[read.location->file];
    if (!file) file = std::make_unique<File>(File::open(read.location->file));
    tensor_bytes += read.location->entry.end - read.location->entry.begin;
  }
  // The tensors spread over the threads this rank's cores allow, as a restore reads.
  std::vector<uint64_t> bytes_read(plan.size(), 0);
  run_in_order(plan.size(), threads_for_read(tensor_bytes, read_threads()), [&](size_t i) {
    torch::NoGradGuard no_grad;
    const Read& read = plan[i];
    const File& file = *files.at(read.location->file);
    const at::Tensor part = read_part(file, *read.location, *read.target, read.source, &bytes_read[i]);
    read.target->tensor.detach().copy_(cast_checked(part, read.target->tensor.scalar_type(), read.target->name,
                                                    *read.location, read.target->slice.has_value()));
  });
  for (uint64_t b : bytes_read) report.bytes_read += b;
  report.loaded = static_cast<int64_t>(plan.size());
  return report;
}

}  // namespace mto
