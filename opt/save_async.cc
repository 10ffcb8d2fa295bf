#include "opt/save_async.h"

#include <torch/csrc/autograd/grad_mode.h>

#include <chrono>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include "distributed/mesh.h"
#include "distributed/world.h"
#include "opt/collective.h"
#include "opt/save_phases.h"
#include "opt/snapshot_pool.h"
#include "serialization/local_cores.h"

namespace mto {

// The state of one background save, shared by its handle and the in-flight registry.
struct AsyncSave {
  PlannedSave planned;
  std::shared_ptr<Communicator> background;
  std::thread thread;
  double blocked_seconds = 0;
  mutable std::mutex mutex;
  bool finished = false;
  std::exception_ptr error;
  bool waited = false;

  // Joins the background thread once; safe to call from several threads.
  void join() {
    std::lock_guard<std::mutex> lock(join_mutex);
    if (thread.joinable()) thread.join();
  }

 private:
  std::mutex join_mutex;
};

namespace {

// Guards the pool, the background communicators and the save in flight.
std::mutex registry_mutex;
// Held by a save_async from finishing the save in flight until its own is in flight: the
// snapshot pool serves one save at a time, so saves from two threads take turns.
std::mutex start_mutex;
SnapshotPool* pool = nullptr;
std::shared_ptr<AsyncSave>* in_flight = nullptr;

// One background communicator per communicator that saves, split from it once.
struct Background {
  std::weak_ptr<Communicator> owner;
  std::shared_ptr<Communicator> communicator;
};
std::map<const Communicator*, Background>* backgrounds = nullptr;

// Registered with atexit at the first save_async, after the world (so it runs before mto
// finalizes MPI), and to run when MPI is finalized (by a program that owns MPI): a save in
// flight at exit is finished, and a failure nobody waited for is printed.
void finish_at_exit() {
  std::shared_ptr<AsyncSave> save;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    if (in_flight == nullptr || *in_flight == nullptr) return;
    save = *in_flight;
  }
  save->join();
  std::lock_guard<std::mutex> lock(save->mutex);
  if (save->error == nullptr || save->waited) return;
  save->waited = true;
  try {
    std::rethrow_exception(save->error);
  } catch (const std::exception& e) {
    std::cerr << "mto: a background save that nobody waited for failed: " << e.what() << "\n";
  }
}

std::shared_ptr<Communicator> background_of(const std::shared_ptr<Communicator>& comm) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  if (backgrounds == nullptr) backgrounds = new std::map<const Communicator*, Background>();
  Background& b = (*backgrounds)[comm.get()];
  if (b.owner.lock() != comm || b.communicator == nullptr) {
    b.owner = comm;
    b.communicator = comm->split(0, comm->rank());
  }
  return b.communicator;
}

// Writes and commits on the background communicator; the outcome goes to `save`.
void run_in_background(AsyncSave* save) {
  try {
    std::string written;
    Communicator& comm = *save->background;
    run_on_every_rank(comm, [&] { written = write_planned_save(save->planned, comm); });
    commit_save(save->planned, written, comm);
  } catch (...) {
    std::lock_guard<std::mutex> lock(save->mutex);
    save->error = std::current_exception();
  }
  save->planned.staging.reset();  // removes an uncommitted staging directory
  save->planned.tensors.clear();
  std::lock_guard<std::mutex> lock(save->mutex);
  save->finished = true;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

SaveHandle::SaveHandle(std::shared_ptr<AsyncSave> save) : save_(std::move(save)) {}

SaveHandle& SaveHandle::operator=(SaveHandle&& other) {
  if (this != &other) {
    SaveHandle old(std::move(*this));
    save_ = std::move(other.save_);
  }
  return *this;
}

SaveHandle::~SaveHandle() {
  if (save_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(save_->mutex);
    if (save_->waited) return;
  }
  try {
    wait();
  } catch (const std::exception& e) {
    std::cerr << "mto: a background save that nobody waited for failed: " << e.what() << "\n";
  }
}

void SaveHandle::wait() {
  if (save_ == nullptr) return;
  save_->join();
  std::lock_guard<std::mutex> lock(save_->mutex);
  save_->waited = true;
  if (save_->error) std::rethrow_exception(save_->error);
}

bool SaveHandle::done() const {
  if (save_ == nullptr) return true;
  std::lock_guard<std::mutex> lock(save_->mutex);
  return save_->finished;
}

double SaveHandle::blocked_seconds() const { return save_ ? save_->blocked_seconds : 0; }

void finish_save_in_flight() {
  std::shared_ptr<AsyncSave> save;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    if (in_flight == nullptr || *in_flight == nullptr) return;
    save = *in_flight;
  }
  save->join();
}

SaveHandle save_async(torch::nn::Module& model, const std::string& dir, const SaveOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  std::shared_ptr<Communicator> comm = options.communicator ? options.communicator : default_mesh()->world();
  const std::lock_guard<std::mutex> turn(start_mutex);
  finish_save_in_flight();
  auto save = std::make_shared<AsyncSave>();
  if (!concurrent_communicators()) {
    mto::save(model, dir, options);
    save->finished = true;
    save->blocked_seconds = seconds_since(start);
    return SaveHandle(save);
  }
  save->background = background_of(comm);
  std::set<size_t> mine;
  // The snapshot: only the tensors this rank writes are copied, and where other ranks hold
  // them too, hashed during the copy for the replica check.
  save->planned = plan_save(model, dir, options, *comm, [&](PlannedSave& planned) {
    std::lock_guard<std::mutex> lock(registry_mutex);
    if (pool == nullptr) {
      pool = new SnapshotPool();
      in_flight = new std::shared_ptr<AsyncSave>();
      std::atexit(finish_at_exit);
      call_at_mpi_finalize(finish_at_exit);
    }
    mine = tensors_written_by(planned, comm->rank());
    std::vector<at::Tensor> sources(planned.tensors.size());
    for (size_t i : mine) sources[i] = planned.tensors[i].tensor;
    torch::NoGradGuard no_grad;
    std::vector<uint64_t> digests;
    const bool hash = replicated(planned.plan);
    const std::vector<at::Tensor> copies =
        pool->copy(sources, static_cast<int>(cores_per_local_rank()), hash ? &digests : nullptr);
    std::map<size_t, uint64_t> known;
    for (size_t i : mine) {
      planned.tensors[i].tensor = copies[i];
      if (hash) known[i] = digests[i];
    }
    return known;
  });
  // The tensors that other ranks write are let go.
  for (size_t i = 0; i < save->planned.tensors.size(); ++i) {
    if (!mine.count(i)) save->planned.tensors[i].tensor = at::Tensor();
  }
  {
    // Registered only once every rank has its snapshot: a failed one leaves nothing behind.
    std::lock_guard<std::mutex> lock(registry_mutex);
    *in_flight = save;
  }
  save->blocked_seconds = seconds_since(start);
  save->thread = std::thread(run_in_background, save.get());
  return SaveHandle(save);
}

}  // namespace mto
