#pragma once

#include <memory>
#include <string>

#include "distributed/communicator.h"

namespace mto {

// A data-parallel x tensor-parallel mesh over the ranks of a world communicator, laid out as
// Megatron lays it: rank = dp_index * tp_size + tp_index, so the tp ranks of one replica are
// neighbours. Each axis is a Communicator over a sub-group of the world (Communicator::split),
// with the world's timeouts and DistributedError behaviour. Written (dp, tp) in messages.
//
//   auto mesh = mto::Mesh::create(mto::world(), /*tp=*/2);   // collective
//   mesh->tp()->all_reduce(partial, mto::ReduceOp::kSum);    // within one replica
//   mto::DataParallel model(inner, mesh->dp());              // across replicas
//
// Immutable once made; safe to share between threads that do not use its communicators at
// the same time.
class Mesh {
 public:
  // Splits `world` into world_size / tp replicas of `tp` ranks each. Collective over
  // `world`. Throws DistributedError before any communication if `tp` is not positive or does
  // not divide the world size, naming both numbers.
  static std::shared_ptr<Mesh> create(std::shared_ptr<Communicator> world, int tp);

  int dp_size() const { return dp_size_; }
  int tp_size() const { return tp_size_; }
  int dp_index() const { return dp_index_; }
  int tp_index() const { return tp_index_; }

  // Every rank of the mesh.
  const std::shared_ptr<Communicator>& world() const { return world_; }
  // The dp_size ranks with this rank's tp_index (the replicas of this rank's slices).
  const std::shared_ptr<Communicator>& dp() const { return dp_; }
  // The tp_size ranks of this rank's replica.
  const std::shared_ptr<Communicator>& tp() const { return tp_; }

  // "(dp=2, tp=2)".
  std::string describe() const;

 private:
  Mesh() = default;

  int dp_size_ = 1;
  int tp_size_ = 1;
  int dp_index_ = 0;
  int tp_index_ = 0;
  std::shared_ptr<Communicator> world_;
  std::shared_ptr<Communicator> dp_;
  std::shared_ptr<Communicator> tp_;
};

// Throws DistributedError unless `tp` is positive and divides `world_size`; the message
// names both numbers.
void check_tensor_parallel_size(int tp, int world_size);

// The mesh that models built by name (model-likes, the command line) are split over: the one
// given to set_default_mesh, else (world_size, 1) over world(), made on first use (collective
// then: every rank must call it).
std::shared_ptr<Mesh> default_mesh();

// Makes `mesh` the default mesh; nullptr goes back to (world_size, 1) over world().
void set_default_mesh(std::shared_ptr<Mesh> mesh);

}  // namespace mto
