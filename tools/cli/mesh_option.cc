#include "tools/cli/mesh_option.h"

#include "absl/strings/str_format.h"
#include "distributed/distributed_error.h"
#include "distributed/mesh.h"
#include "distributed/world.h"
#include "opt/errors.h"
#include "tools/cli/validators.h"

namespace mto {
namespace cli {

void add_tp_option(CLI::App* command, int* tp) {
  command->add_option("--tp", *tp,
                      "Tensor-parallel size: the ranks form a (world / tp) x tp data x tensor parallel mesh, and "
                      "language models split their heads, MLP and vocabulary over each tp group")
      ->capture_default_str()
      ->check(positive());
}

void check_model_splits(const Mesh& mesh, bool splits, const std::string& model) {
  if (splits || mesh.tp_size() == 1) return;
  throw ConfigError(absl::StrFormat(
      "--tp %d: %s does not split over tensor-parallel ranks (only the gpt does), so the mesh %s would have each "
      "group of %d ranks do the same work; use --tp 1",
      mesh.tp_size(), model, mesh.describe(), mesh.tp_size()));
}

std::shared_ptr<Mesh> join_mesh(int tp) {
  const std::shared_ptr<Communicator> ranks = world();
  try {
    check_tensor_parallel_size(tp, ranks->world_size());
  } catch (const DistributedError& e) {
    throw ConfigError(absl::StrFormat("--tp %d: %s", tp, e.what()));
  }
  std::shared_ptr<Mesh> mesh = Mesh::create(ranks, tp);
  set_default_mesh(mesh);
  return mesh;
}

}  // namespace cli
}  // namespace mto
