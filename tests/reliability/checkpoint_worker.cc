// The process that the reliability scripts start (alone or on mpirun ranks), kill, starve
// of disk and check. One subcommand per role; every failed check prints "FAIL: ..." and
// exits 1, so the scripts only count exit codes and grep lines.
//
//   checkpoint_worker save DIR GEN [MB]          collective save of generation GEN
//   checkpoint_worker save-loop DIR GEN PIDDIR   writes PIDDIR/rank-R, then saves GEN, GEN+1,
//                                                GEN, ... until killed, printing "saved G"
//   checkpoint_worker restore DIR GEN [MB]       collective restore; must equal GEN
//   checkpoint_worker check DIR OLD NEW NEXT     one process: DIR holds OLD or NEW bit for
//                                                bit and verifies; then saving NEXT succeeds,
//                                                restores, and leaves no hidden entries
//   checkpoint_worker die save|restore DIR GEN VICTIM
//                                                rank VICTIM dies in the middle of the
//                                                collective call (see die()); the others
//                                                print what they caught
#include <dlfcn.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "distributed/distributed_error.h"
#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "serialization/checkpoint_layout.h"
#include "tests/reliability/reliability_model.h"

// Armed by die() on a restore's victim: its next pread, the first read of the checkpoint,
// ends the process instead.
static std::atomic<bool> die_at_next_read{false};

// This program's own pread, which the library's reads reach ahead of libc's: libc's, unless
// a restore's victim is armed to die.
extern "C" ssize_t pread(int fd, void* data, size_t size, off_t offset) {
  if (die_at_next_read.load()) std::_Exit(3);
  using Pread = ssize_t (*)(int, void*, size_t, off_t);
  static const auto libc_pread = reinterpret_cast<Pread>(::dlsym(RTLD_NEXT, "pread"));
  return libc_pread(fd, data, size, offset);
}

namespace mto {
namespace reliability {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

[[noreturn]] void fail(const std::string& what) {
  std::cout << "FAIL: " << what << std::endl;
  std::exit(1);
}

// Hidden entries next to `dir`: what interrupted saves leave behind.
std::vector<std::string> hidden_siblings(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(fs::path(dir).parent_path())) {
    if (e.path().filename().string()[0] == '.') out.push_back(e.path().filename().string());
  }
  return out;
}

// "" if the checkpoint at `dir` restores (on this communicator) to generation `gen`.
std::string restore_difference(const std::string& dir, int64_t gen, int64_t megabytes,
                               const RestoreOptions& options = {}) {
  const ModulePtr restored = restore(dir, options);
  const std::string difference = weight_difference(*restored, *make_model(gen, megabytes));
  return difference.empty() ? "" : "tensor " + difference + " differs from generation " + std::to_string(gen);
}

int save_once(const std::string& dir, int64_t gen, int64_t megabytes) {
  const auto comm = world();
  const ModulePtr model = make_model(gen, megabytes);
  const auto start = Clock::now();
  try {
    save(*model, dir);
  } catch (const std::exception& e) {
    std::cout << "rank " << comm->rank() << " error: " << e.what() << std::endl;
    return 2;
  }
  if (comm->rank() == 0) std::cout << "saved generation " << gen << " in " << seconds_since(start) << " s" << std::endl;
  return 0;
}

int save_loop(const std::string& dir, int64_t first_gen, const std::string& pid_dir) {
  const auto comm = world();
  // Two generations, built before the first save and saved in turn, so that the saves follow
  // each other closely and every save changes every byte.
  const ModulePtr models[2] = {make_model(first_gen), make_model(first_gen + 1)};
  const std::string pid_file = pid_dir + "/rank-" + std::to_string(comm->rank());
  std::ofstream(pid_file + ".tmp") << ::getpid() << "\n";
  fs::rename(pid_file + ".tmp", pid_file);
  comm->barrier();
  // A bound in case the killer never comes.
  for (int i = 0; i < 500; ++i) {
    save_generation(*models[i % 2], dir);
    if (comm->rank() == 0) std::cout << "saved " << first_gen + i % 2 << std::endl;
  }
  return 0;
}

int restore_once(const std::string& dir, int64_t gen, int64_t megabytes) {
  const auto comm = world();
  const auto start = Clock::now();
  const std::string difference = restore_difference(dir, gen, megabytes);
  if (!difference.empty()) fail("rank " + std::to_string(comm->rank()) + ": " + difference);
  if (comm->rank() == 0) std::cout << "restored generation " << gen << " in " << seconds_since(start) << " s" << std::endl;
  return 0;
}

int check(const std::string& dir, int64_t old_gen, int64_t new_gen, int64_t next_gen) {
  const std::vector<std::string> leftovers = hidden_siblings(dir);
  std::string holds;
  try {
    const ModulePtr restored = restore(dir);
    if (weight_difference(*restored, *make_model(old_gen)).empty()) {
      holds = "previous";
    } else if (weight_difference(*restored, *make_model(new_gen)).empty()) {
      holds = "new";
    } else {
      fail(dir + " restores to weights of neither generation " + std::to_string(old_gen) + " nor " +
           std::to_string(new_gen));
    }
    verify_checkpoint(dir);
  } catch (const std::exception& e) {
    fail(std::string("the checkpoint does not restore: ") + e.what());
  }
  try {
    save(*make_model(next_gen), dir);
  } catch (const std::exception& e) {
    fail(std::string("the next save failed: ") + e.what());
  }
  const std::vector<std::string> after = hidden_siblings(dir);
  if (!after.empty()) fail("the next save left " + std::to_string(after.size()) + " hidden entries, e.g. " + after[0]);
  const std::string difference = restore_difference(dir, next_gen, kDefaultMegabytes);
  if (!difference.empty()) fail("after the next save: " + difference);
  std::cout << "check ok: holds " << holds << " generation " << (holds == "new" ? new_gen : old_gen) << ", "
            << leftovers.size() << " leftover entries before the next save" << std::endl;
  return 0;
}

// Rank `victim` dies in the middle of `op`: during a save once its own shard file appears in
// the staging directory (SIGKILL), during a restore at its first read of the checkpoint
// (_exit from pread): then collectives are still to come whatever its share of the weights.
// The others must throw a DistributedError within the collective timeout.
int die(const std::string& op, const std::string& dir, int64_t gen, int victim) {
  const auto comm = world();
  const ModulePtr model = make_model(gen + 1);
  if (comm->rank() == victim && op == "save") {
    const std::string shard = shard_file_name(victim, comm->world_size());
    const std::string parent = fs::path(dir).parent_path().string();
    std::thread([=] {
      for (;;) {
        for (const auto& e : fs::directory_iterator(parent)) {
          if (e.path().filename().string()[0] == '.' && fs::exists(e.path() / shard)) ::kill(::getpid(), SIGKILL);
        }
      }
    }).detach();
    // The watcher must see the moment come before this thread, sharing two cores with every
    // rank, finishes the save: give this thread the lowest priority (Linux: per thread;
    // after starting the watcher, which would inherit it).
    ::setpriority(PRIO_PROCESS, 0, 19);
  }
  if (comm->rank() == victim && op == "restore") die_at_next_read = true;
  const auto start = Clock::now();
  try {
    if (op == "save") {
      save(*model, dir);
    } else {
      restore(dir);
    }
  } catch (const DistributedError& e) {
    std::cout << "rank " << comm->rank() << " caught DistributedError after " << seconds_since(start)
              << " s: " << e.what() << std::endl;
    return 4;
  } catch (const std::exception& e) {
    std::cout << "rank " << comm->rank() << " caught another error after " << seconds_since(start)
              << " s: " << e.what() << std::endl;
    return 5;
  }
  std::cout << "rank " << comm->rank() << " finished the " << op << " with no error" << std::endl;
  if (comm->rank() == victim) std::this_thread::sleep_for(std::chrono::seconds(600));
  return 0;
}

}  // namespace
}  // namespace reliability
}  // namespace mto

int main(int argc, char** argv) {
  using namespace mto::reliability;
  at::set_num_threads(1);
  use_split_model_from_env();
  const std::vector<std::string> args(argv + 1, argv + argc);
  auto arg = [&](size_t i) -> int64_t { return i < args.size() ? std::stoll(args[i]) : -1; };
  const std::string command = args.empty() ? "" : args[0];
  if (command == "save" && args.size() >= 3) {
    return save_once(args[1], arg(2), args.size() > 3 ? arg(3) : kDefaultMegabytes);
  }
  if (command == "save-loop" && args.size() == 4) return save_loop(args[1], arg(2), args[3]);
  if (command == "restore" && args.size() >= 3) {
    return restore_once(args[1], arg(2), args.size() > 3 ? arg(3) : kDefaultMegabytes);
  }
  if (command == "check" && args.size() == 5) return check(args[1], arg(2), arg(3), arg(4));
  if (command == "die" && args.size() == 5) return die(args[1], args[2], arg(3), static_cast<int>(arg(4)));
  std::cerr << "usage: see the top of checkpoint_worker.cc\n";
  return 64;
}
