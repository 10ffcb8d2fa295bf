#include "distributed/mesh.h"

#include <mutex>

#include "absl/strings/str_cat.h"
#include "distributed/distributed_error.h"
#include "distributed/world.h"

namespace mto {
namespace {

std::mutex default_mesh_mutex;
std::shared_ptr<Mesh>* default_mesh_value = new std::shared_ptr<Mesh>();

}  // namespace

void check_tensor_parallel_size(int tp, int world_size) {
  if (tp <= 0 || world_size % tp != 0) {
    throw DistributedError(absl::StrCat("the tensor-parallel size ", tp,
                                        " does not divide the world size ", world_size,
                                        " (ranks = dp x tp)"));
  }
}

std::shared_ptr<Mesh> Mesh::create(std::shared_ptr<Communicator> world, int tp) {
  check_tensor_parallel_size(tp, world->world_size());
  std::shared_ptr<Mesh> mesh(new Mesh());
  mesh->tp_size_ = tp;
  mesh->dp_size_ = world->world_size() / tp;
  mesh->dp_index_ = world->rank() / tp;
  mesh->tp_index_ = world->rank() % tp;
  // Replica dp_index holds ranks [dp_index * tp, (dp_index + 1) * tp); the dp group of a
  // tp_index holds every tp-th rank.
  mesh->tp_ = world->split(mesh->dp_index_, mesh->tp_index_);
  mesh->dp_ = world->split(mesh->tp_index_, mesh->dp_index_);
  mesh->world_ = std::move(world);
  return mesh;
}

std::string Mesh::describe() const { return absl::StrCat("(dp=", dp_size_, ", tp=", tp_size_, ")"); }

std::shared_ptr<Mesh> default_mesh() {
  std::lock_guard<std::mutex> lock(default_mesh_mutex);
  if (!*default_mesh_value) *default_mesh_value = Mesh::create(world(), 1);
  return *default_mesh_value;
}

void set_default_mesh(std::shared_ptr<Mesh> mesh) {
  std::lock_guard<std::mutex> lock(default_mesh_mutex);
  *default_mesh_value = std::move(mesh);
}

}  // namespace mto
