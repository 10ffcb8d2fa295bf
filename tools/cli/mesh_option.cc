#include "tools/cli/mesh_option.h"

#include "distributed/world.h"
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

std::shared_ptr<Mesh> join_mesh(int tp) {
  std::shared_ptr<Mesh> mesh = Mesh::create(world(), tp);
  set_default_mesh(mesh);
  return mesh;
}

}  // namespace cli
}  // namespace mto
