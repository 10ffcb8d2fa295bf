#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "distributed/communicator.h"
#include "opt/state_dict.h"
#include "serialization/checkpoint_plan.h"
#include "serialization/file.h"
#include "serialization/manifest.pb.h"
#include "serialization/tensor_blocks.h"

namespace mto {

// A tensor split along dimension 1 (a row-parallel weight) has parts that each hold a piece
// of every row, so writing the parts where they lie takes a system call per row piece, and
// the writers of one tensor take turns on its file's pages. Instead, the writers of its parts
// exchange them (all_to_all) so that each writes one band of whole rows with large writes:
// what Megatron and DCP avoid by giving every rank a file of its own, which a standard
// safetensors set cannot do.

// A tensor of a plan whose parts are exchanged, and who writes what.
struct RowExchange {
  // Index into CheckpointPlan::tensors.
  size_t tensor = 0;
  // Its parts (indices into CheckpointPlan::slices) by ascending columns. The writer of
  // part i writes the rows band_rows(plan, exchange, i).
  std::vector<size_t> parts;
};

// The tensors of `plan` split into at least two column parts, each of all the rows, whose
// writers are distinct ranks; in plan order.
std::vector<RowExchange> row_exchanges(const CheckpointPlan& plan);

// Band `i` of the rows of `exchange`'s tensor (whole rows): the i-th of parts.size() equal
// bands, give or take a row.
Rect band_rows(const CheckpointPlan& plan, const RowExchange& exchange, size_t i);

// Writes the tensors of `exchanges` (row_exchanges(plan)): this rank sends the rows of the
// parts it writes to their bands' writers and writes its own band into `file(shard)`, in
// rounds of about 8 MiB received per writer. `tensors` are this rank's, indexed as
// plan.tensors. Appends a record of the blocks it wrote per tensor to `written`. A write
// that fails does not stop the exchange (its peers would wait for it): the rank goes on
// trading rows and throws its first failure at the end. Collective: every rank calls it with
// the same plan.
void write_by_row_exchange(const CheckpointPlan& plan, const std::vector<RowExchange>& exchanges,
                           const std::vector<StateTensor>& tensors, const std::function<File&(uint32_t)>& file,
                           Communicator& comm, Manifest* written);

}  // namespace mto
