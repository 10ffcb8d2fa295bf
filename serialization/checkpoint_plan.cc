#include "serialization/checkpoint_plan.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checksum.h"
#include "serialization/safetensors.h"

namespace mto {
namespace {

// A distinct part of a tensor and the ranks that hold it.
struct Part {
  Rect rect;
  std::vector<int> holders;
};

std::string shape_text(const std::vector<int64_t>& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

// Gives each item to the candidate that carries least so far, heaviest item first (ties go
// to the earlier item and the lower rank): deterministic on every rank.
std::vector<int> assign_by_weight(const std::vector<uint64_t>& weights,
                                  const std::vector<std::vector<int>>& candidates, int ranks) {
  std::vector<size_t> order(weights.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return weights[a] > weights[b]; });
  std::vector<uint64_t> load(ranks, 0);
  std::vector<int> out(weights.size(), 0);
  for (size_t i : order) {
    int best = candidates[i].front();
    for (int r : candidates[i]) {
      if (load[r] < load[best] || (load[r] == load[best] && r < best)) best = r;
    }
    out[i] = best;
    load[best] += weights[i];
  }
  return out;
}

// Throws unless every rank lists the same tensors, dtypes and global shapes as rank 0.
void check_same_tensors(const std::vector<std::vector<HeldSlice>>& held) {
  const auto& reference = held[0];
  for (size_t r = 1; r < held.size(); ++r) {
    const auto& other = held[r];
    for (size_t i = 0; i < std::max(reference.size(), other.size()); ++i) {
      if (i >= reference.size() || i >= other.size() || other[i].name != reference[i].name) {
        throw CheckpointError(absl::StrCat(
            "save: the list of tensors differs between rank 0 and rank ", r, " (at position ", i,
            ", rank 0 has ", i < reference.size() ? reference[i].name : "no tensor", ", rank ", r,
            " has ", i < other.size() ? other[i].name : "no tensor",
            "); every rank must hold the same model"));
      }
      if (other[i].dtype != reference[i].dtype || other[i].global_shape != reference[i].global_shape) {
        throw CheckpointError(absl::StrCat(
            "save: tensor ", reference[i].name, " is ", reference[i].dtype, " ",
            shape_text(reference[i].global_shape), " on rank 0 but ", other[i].dtype, " ",
            shape_text(other[i].global_shape), " on rank ", r));
      }
    }
  }
}

}  // namespace

CheckpointPlan plan_checkpoint(const std::vector<std::vector<HeldSlice>>& held) {
  if (held.empty()) throw CheckpointError("save: no ranks");
  check_same_tensors(held);
  const int ranks = static_cast<int>(held.size());
  const auto& reference = held[0];
  CheckpointPlan plan;

  std::vector<uint64_t> part_bytes;
  std::vector<std::vector<int>> part_holders;
  std::vector<uint64_t> tensor_bytes;
  for (size_t i = 0; i < reference.size(); ++i) {
    const HeldSlice& t = reference[i];
    const size_t element_size = c10::elementSize(scalar_type_from_safetensors(t.dtype, t.name));
    const MatrixShape matrix = matrix_shape(t.global_shape);
    std::vector<Part> parts;
    const bool empty = matrix.rows == 0 || matrix.cols == 0;
    for (int r = 0; r < ranks; ++r) {
      // Every slice of an empty tensor is the same (empty) part.
      const Rect rect = empty ? whole_rect(matrix) : held[r][i].rect;
      auto it = std::find_if(parts.begin(), parts.end(), [&](const Part& p) { return p.rect == rect; });
      if (it == parts.end()) {
        parts.push_back({rect, {r}});
      } else {
        it->holders.push_back(r);
      }
    }
    std::vector<Rect> rects;
    for (const Part& p : parts) rects.push_back(p.rect);
    check_tiling(rects, matrix, absl::StrCat("save: the parts of tensor ", t.name, " that the ranks hold"));

    TensorRecord& record = plan.tensors.emplace_back();
    record.set_name(t.name);
    record.set_dtype(t.dtype);
    for (int64_t d : t.global_shape) record.add_shape(d);
    record.set_length(matrix.rows * matrix.cols * element_size);
    record.set_split_parts(static_cast<int32_t>(parts.size()));
    record.set_split_dim(parts.size() > 1 && parts[0].rect.cols() != matrix.cols ? 1 : 0);
    plan.tensor_parallel_size = std::max<int>(plan.tensor_parallel_size, static_cast<int>(parts.size()));
    tensor_bytes.push_back(record.length());
    for (Part& p : parts) {
      part_bytes.push_back(p.rect.area() * element_size);
      part_holders.push_back(p.holders);
      plan.slices.push_back({i, p.rect, 0, std::move(p.holders)});
    }
  }

  const std::vector<int> writers = assign_by_weight(part_bytes, part_holders, ranks);
  for (size_t s = 0; s < plan.slices.size(); ++s) plan.slices[s].writer = writers[s];

  // A tensor held whole lives in its writer's shard; split tensors then fill the shards with
  // the fewest bytes, largest first.
  std::vector<int> file_of(plan.tensors.size(), -1);
  std::vector<uint64_t> file_bytes(ranks, 0);
  std::vector<size_t> split_tensors;
  for (size_t s = 0; s < plan.slices.size(); ++s) {
    const size_t i = plan.slices[s].tensor;
    if (plan.tensors[i].split_parts() == 1) {
      file_of[i] = plan.slices[s].writer;
      file_bytes[file_of[i]] += tensor_bytes[i];
    } else if (split_tensors.empty() || split_tensors.back() != i) {
      split_tensors.push_back(i);
    }
  }
  std::stable_sort(split_tensors.begin(), split_tensors.end(),
                   [&](size_t a, size_t b) { return tensor_bytes[a] > tensor_bytes[b]; });
  for (size_t i : split_tensors) {
    file_of[i] = static_cast<int>(std::min_element(file_bytes.begin(), file_bytes.end()) - file_bytes.begin());
    file_bytes[file_of[i]] += tensor_bytes[i];
  }
  for (int f = 0; f < ranks; ++f) {
    std::vector<SafetensorsEntry> entries;
    std::vector<size_t> members;
    uint64_t offset = 0;
    for (size_t i = 0; i < plan.tensors.size(); ++i) {
      if (file_of[i] != f) continue;
      const TensorRecord& t = plan.tensors[i];
      SafetensorsEntry& e = entries.emplace_back();
      e.name = t.name();
      e.dtype = t.dtype();
      e.shape.assign(t.shape().begin(), t.shape().end());
      e.begin = offset;
      e.end = offset + t.length();
      offset = e.end;
      members.push_back(i);
    }
    std::string header = encode_safetensors_header(entries, {{"format", "pt"}, {"writer_rank", std::to_string(f)}});
    for (size_t k = 0; k < members.size(); ++k) {
      plan.tensors[members[k]].set_shard(static_cast<uint32_t>(f));
      plan.tensors[members[k]].set_offset(header.size() + entries[k].begin);
    }
    ShardRecord& shard = plan.shards.emplace_back();
    shard.set_file(shard_file_name(f, ranks));
    shard.set_size(header.size() + offset);
    shard.set_data_begin(header.size());
    shard.set_header_xxh3(xxh3_64(header.data(), header.size()));
    shard.set_writer_rank(f);
    plan.headers.push_back(std::move(header));
  }
  return plan;
}

std::vector<size_t> write_order(const CheckpointPlan& plan, int rank) {
  const size_t files = plan.shards.size();
  std::vector<size_t> mine;
  for (size_t s = 0; s < plan.slices.size(); ++s) {
    if (plan.slices[s].writer == rank) mine.push_back(s);
  }
  auto distance = [&](size_t s) { return (plan.tensors[plan.slices[s].tensor].shard() + files - rank % files) % files; };
  std::stable_sort(mine.begin(), mine.end(), [&](size_t a, size_t b) { return distance(a) < distance(b); });
  return mine;
}

void check_replicas(const CheckpointPlan& plan, const std::vector<std::vector<uint64_t>>& digests) {
  std::vector<size_t> next(digests.size(), 0);
  for (const SlicePlan& part : plan.slices) {
    if (part.holders.size() < 2) continue;
    std::vector<uint64_t> seen;
    for (int r : part.holders) {
      if (static_cast<size_t>(r) >= digests.size() || next[r] >= digests[r].size()) {
        throw CheckpointError(absl::StrCat("save: rank ", r, " sent too few checksums to compare its copies"));
      }
      seen.push_back(digests[r][next[r]++]);
    }
    for (size_t k = 1; k < seen.size(); ++k) {
      if (seen[k] != seen[0]) {
        throw CheckpointError(absl::StrCat(
            "save: tensor ", plan.tensors[part.tensor].name(), " differs between rank ", part.holders[0],
            " and rank ", part.holders[k],
            "; every rank must hold the same model (wrap it in mto::DataParallel, or broadcast "
            "rank 0's weights) before saving"));
      }
    }
  }
}

}  // namespace mto
