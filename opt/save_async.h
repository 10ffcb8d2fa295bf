#pragma once

#include <memory>
#include <string>

#include <torch/nn/module.h>

#include "opt/checkpoint.h"

namespace mto {

struct AsyncSave;

// A save that save_async started and that goes on in the background; wait() ends it.
class [[nodiscard]] SaveHandle {
 public:
  // A handle of no save: wait() returns at once.
  SaveHandle() = default;
  explicit SaveHandle(std::shared_ptr<AsyncSave> save);
  SaveHandle(SaveHandle&&) = default;
  SaveHandle& operator=(SaveHandle&& other);
  // Waits for the save if wait() was not called; a failure is printed, not thrown.
  ~SaveHandle();

  // Blocks until the checkpoint is committed on every rank, or rethrows the failure: the
  // same exception, with the same text, as save would have thrown, on every rank. Later
  // calls return (or rethrow) at once. Not collective: the background save's collectives
  // run on a communicator of its own.
  void wait();
  // Whether the background save has ended on this rank (committed or failed), so that
  // wait() will not block.
  bool done() const;
  // Seconds save_async blocked its caller: planning with the other ranks and the snapshot.
  double blocked_seconds() const;

 private:
  std::shared_ptr<AsyncSave> save_;
};

// Starts saving `model` as the checkpoint directory `dir`, exactly as save would, and returns
// once the weights this rank writes are copied into a host staging pool (reused by the next
// save, so repeated saves allocate nothing new): the caller may then change the model. The
// files are written, checksummed, fsynced and committed atomically by a background thread,
// whose collectives run on a communicator split once from options.communicator. Collective:
// every rank calls it. A save_async or save still in flight in this process is finished
// first (a save_async from another thread waits its turn), and so is it by restore and
// load_safetensors in this process. One in flight at exit, or when a program that
// initialized MPI itself finalizes it, is finished before MPI is finalized, and its failure
// printed if nobody waited for it. A crash at any moment leaves the previous checkpoint at
// `dir` intact and the new one complete or absent.
// Throws what save throws for a failure found while planning (a `dir` that is not an mto
// checkpoint, replicas that differ, ...); later failures come from wait(). Where MPI lacks
// MPI_THREAD_MULTIPLE (concurrent_communicators() is false), saves synchronously and
// returns a handle that is already done.
SaveHandle save_async(torch::nn::Module& model, const std::string& dir, const SaveOptions& options = {});

// Waits for the save_async in flight in this process, if any. Its failure stays with its
// handle.
void finish_save_in_flight();

}  // namespace mto
