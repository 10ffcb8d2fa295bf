#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "distributed/mesh.h"

namespace mto {
namespace cli {

// Adds "--tp N" (the tensor-parallel size of the data x tensor parallel mesh) to `command`,
// stored in `*tp`.
void add_tp_option(CLI::App* command, int* tp);

// Splits the world into the mesh (world_size / tp, tp) and makes it the default mesh, so
// that models built and restored by name are split over it. Collective. Throws ConfigError
// on every rank when a rank runs with other arguments than rank 0, or when `tp` does not
// divide the world size (naming both numbers).
std::shared_ptr<Mesh> join_mesh(int tp);

// Refuses a tensor-parallel mesh for a model that does not split over it (`splits` false:
// the classifiers), where every rank of a tp group would do the same work. Throws
// ConfigError naming `model` (a zoo name or a checkpoint) and the mesh.
void check_model_splits(const Mesh& mesh, bool splits, const std::string& model);

}  // namespace cli
}  // namespace mto
