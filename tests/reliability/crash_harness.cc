// Crash injection: kills a saving process at chosen moments, N times, and checks after every
// kill that the checkpoint directory holds the previous save or the new one, bit for bit,
// that it verifies, and that the next save succeeds and leaves no hidden entries behind.
//
//   crash_harness TRIALS WORKER [SEED] [MPI_EVERY]
//
// Most trials kill a forked child of this process that saves in a loop (a fork starts in
// milliseconds, where a process that loads LibTorch takes a second); every MPI_EVERY-th
// (5 by default) kills one rank of `mpirun -np 2|3 WORKER save-loop`, which takes seconds.
// The moment cycles through: a new staging directory appears, the victim's shard reaches a
// random fraction of its size, modelopt_state.pb appears, a MANIFEST appears in the staging
// directory, a commit has put a new directory in place, and a random delay over two measured
// saves. The phase each kill hit is read from the directory at that instant and counted in
// the summary.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "serialization/checkpoint_layout.h"
#include "tests/reliability/reliability_model.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace reliability {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr char kName[] = "ckpt";
const char* const kMoments[] = {"staging", "shard", "metadata", "manifest", "renamed", "delay"};

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

ino_t inode_of(const fs::path& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

uint64_t size_of(const fs::path& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

std::vector<std::string> hidden_entries(const fs::path& parent) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(parent)) {
    if (e.path().filename().string()[0] == '.') out.push_back(e.path().filename().string());
  }
  return out;
}

// Watches the directory of a save in progress, as another process would: decides when a
// kill moment has come and tells the phase of the save from the files present.
class SaveWatch {
 public:
  SaveWatch(const fs::path& parent, int ranks, int victim)
      : parent_(parent), ranks_(ranks), victim_(victim) {
    for (const auto& dir : staging_dirs()) leftovers_.insert(dir);
    uint64_t weights = 0;
    for (const auto& e : fs::directory_iterator(parent / kName)) {
      if (e.path().extension() == ".safetensors") weights += size_of(e.path());
    }
    // The victim's shard will be about this big (the previous save may have had other ranks).
    full_shard_ = weights / ranks;
    committed_.insert(inode_of(parent / kName));
  }

  // Polls once; `elapsed_ms` is the time since the save loop started.
  bool reached(const std::string& moment, double value, double elapsed_ms) {
    const ino_t now = inode_of(parent_ / kName);
    bool met = false;
    if (moment == "delay") {
      met = elapsed_ms >= value;
    } else if (moment == "renamed") {
      met = now != 0 && !committed_.count(now);
    } else {
      for (const auto& dir : current_staging()) {
        if (moment == "staging") met = true;
        if (moment == "shard") met = size_of(dir / shard_file_name(victim_, ranks_)) >= value * full_shard_;
        if (moment == "metadata") met = fs::exists(dir / kStateFileName);
        if (moment == "manifest") met = fs::exists(dir / kManifestFileName);
      }
    }
    committed_.insert(now);
    return met;
  }

  std::string phase() const {
    std::string phase = "between saves";
    for (const auto& dir : staging_dirs()) {
      if (leftovers_.count(dir)) continue;
      int shards = 0;
      for (int r = 0; r < ranks_; ++r) shards += fs::exists(dir / shard_file_name(r, ranks_));
      if (committed_.count(inode_of(dir))) {
        // After the exchange, the staging path holds a directory that was the checkpoint.
        phase = "after the rename, deleting the previous checkpoint";
      } else if (fs::exists(dir / kManifestFileName)) {
        phase = "commit: MANIFEST written, before the rename";
      } else if (fs::exists(dir / kStateFileName)) {
        phase = "metadata writes";
      } else if (shards > 0) {
        phase = "shard writes";
      } else {
        phase = "staging directory made, before the shard writes";
      }
    }
    return phase;
  }

 private:
  std::vector<fs::path> staging_dirs() const {
    const std::string prefix = std::string(".") + kName + ".mto-staging-";
    std::vector<fs::path> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(parent_, ec)) {
      if (e.path().filename().string().rfind(prefix, 0) == 0) out.push_back(e.path());
    }
    return out;
  }

  // Staging directories of the save loop (not left by earlier trials, not a checkpoint
  // swapped out by a commit).
  std::vector<fs::path> current_staging() const {
    std::vector<fs::path> out;
    for (const auto& dir : staging_dirs()) {
      if (!leftovers_.count(dir) && !committed_.count(inode_of(dir))) out.push_back(dir);
    }
    return out;
  }

  fs::path parent_;
  int ranks_;
  int victim_;
  uint64_t full_shard_ = 0;
  std::set<fs::path> leftovers_;
  std::set<ino_t> committed_;
};

struct Trial {
  int ranks = 1;
  int victim = 0;
  std::string moment;
  double value = 0;
};

// How a killed save loop ended.
struct Killed {
  std::string phase;
  int64_t last_saved = -1;  // the last generation the loop reported saved, or -1
  std::string error;        // why the trial is invalid, or ""
};

// Waits until the moment of `trial` (or 30 s), then SIGKILLs `pid`.
void kill_at_moment(const Trial& trial, SaveWatch& watch, pid_t pid, Clock::time_point start, Killed& out) {
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (!watch.reached(trial.moment, trial.value, ms_since(start))) {
    if (Clock::now() > deadline) {
      out.error = "the moment never came within 30 s";
      break;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  ::kill(pid, SIGKILL);
  out.phase = watch.phase();
}

// Saves generations first, first + 1, first, ... in a forked child until it is killed.
Killed kill_forked_saver(const Trial& trial, const fs::path& parent, int64_t first,
                         const ModulePtr (&models)[2]) {
  Killed out;
  int fds[2];
  if (::pipe(fds) != 0) return {"", -1, "pipe failed"};
  SaveWatch watch(parent, 1, 0);
  const auto start = Clock::now();
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(fds[0]);
    try {
      for (int i = 0; i < 500; ++i) {
        save_generation(*models[i % 2], (parent / kName).string());
        const int64_t saved = first + i % 2;
        if (::write(fds[1], &saved, sizeof(saved)) != sizeof(saved)) std::_Exit(4);
      }
    } catch (const std::exception& e) {
      std::cerr << "saver: " << e.what() << std::endl;
      std::_Exit(3);
    }
    std::_Exit(0);
  }
  ::close(fds[1]);
  kill_at_moment(trial, watch, child, start, out);
  int status = 0;
  ::waitpid(child, &status, 0);
  if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) {
    out.error = "the saver ended before the kill (status " + std::to_string(status) + ")";
  }
  int64_t saved;
  while (::read(fds[0], &saved, sizeof(saved)) == sizeof(saved)) out.last_saved = saved;
  ::close(fds[0]);
  return out;
}

// Whether process `pid` still runs: its /proc entry exists and it is not a zombie (a zombie
// has closed its files, so its locks are gone).
bool running(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const size_t name_end = line.rfind(')');
  return name_end == std::string::npos || name_end + 2 >= line.size() || line[name_end + 2] != 'Z';
}

// Waits up to `seconds` until no rank whose pid file is in `pids` still runs; true if none
// does. mpirun can exit while a rank it killed is still finishing a system call (an fsync),
// holding its staging directory's lock, so that the next save may not remove that directory.
bool ranks_exited(const fs::path& pids, double seconds) {
  std::vector<pid_t> ranks;
  for (const auto& e : fs::directory_iterator(pids)) {
    pid_t pid = 0;
    if (std::ifstream(e.path()) >> pid) ranks.push_back(pid);
  }
  for (const auto start = Clock::now();; std::this_thread::sleep_for(std::chrono::milliseconds(5))) {
    if (std::none_of(ranks.begin(), ranks.end(), running)) return true;
    if (ms_since(start) > seconds * 1000) return false;
  }
}

// Runs `mpirun -np RANKS WORKER save-loop` and kills its rank `victim`.
Killed kill_mpi_rank(const Trial& trial, const fs::path& work, const std::string& worker, int64_t first) {
  Killed out;
  const fs::path pids = work / "pids";
  const fs::path log = work / "mpirun.log";
  fs::remove_all(pids);
  fs::create_directories(pids);
  const std::string dir = (work / "checkpoints" / kName).string();
  const std::vector<std::string> args = {
      "mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", std::to_string(trial.ranks),
      "-x", "TMPDIR", "-x", "OMP_NUM_THREADS", "-x", "MTO_COLLECTIVE_TIMEOUT",
      worker, "save-loop", dir, std::to_string(first), pids.string()};
  const pid_t job = ::fork();
  if (job == 0) {
    ::setpgid(0, 0);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp("mpirun", argv.data());
    std::_Exit(127);
  }
  auto wait_job = [&](double seconds) {
    int status = 0;
    for (const auto start = Clock::now(); ms_since(start) < seconds * 1000;) {
      if (::waitpid(job, &status, WNOHANG) == job) return status;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ::kill(-job, SIGKILL);
    ::waitpid(job, &status, 0);
    return -1;
  };
  pid_t victim = 0;
  for (const auto start = Clock::now(); victim == 0;) {
    std::ifstream(pids / ("rank-" + std::to_string(trial.victim))) >> victim;
    if (ms_since(start) > 60000) {
      wait_job(0);
      return {"", -1, "the victim never wrote its pid file"};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  // The loop starts once every rank has written its pid file.
  while (static_cast<int>(std::distance(fs::directory_iterator(pids), fs::directory_iterator())) < trial.ranks) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  SaveWatch watch(work / "checkpoints", trial.ranks, trial.victim);
  kill_at_moment(trial, watch, victim, Clock::now(), out);
  const int status = wait_job(60);
  if (status == -1) out.error = "the job hung for 60 s after the kill";
  if (status == 0) out.error = "the job exited 0 after a rank was killed";
  if (!ranks_exited(pids, 30)) out.error = "a rank still ran 30 s after mpirun ended";
  std::ifstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("saved ", 0) == 0) out.last_saved = std::stoll(line.substr(6));
  }
  return out;
}

// Whether `dir` holds `a` or `b` bit for bit and verifies; then a save of `next` must
// succeed, leave no hidden entry next to `dir` and restore bit for bit. Returns "" or what
// failed; `holds` says which generation it found.
std::string check(const fs::path& parent, const ModulePtr& a, const ModulePtr& b, const ModulePtr& next,
                  std::string& holds) {
  const std::string dir = (parent / kName).string();
  try {
    const ModulePtr restored = restore(dir);
    if (weight_difference(*restored, *a).empty()) {
      holds = "previous";
    } else if (weight_difference(*restored, *b).empty()) {
      holds = "new";
    } else {
      return "the checkpoint restores to neither the previous nor the new weights";
    }
    verify_checkpoint(dir);
  } catch (const std::exception& e) {
    return std::string("the checkpoint does not restore: ") + e.what();
  }
  try {
    save(*next, dir);
  } catch (const std::exception& e) {
    return std::string("the next save failed: ") + e.what();
  }
  const std::vector<std::string> garbage = hidden_entries(parent);
  if (!garbage.empty()) {
    return "the next save left " + std::to_string(garbage.size()) + " hidden entries, e.g. " + garbage[0];
  }
  const std::string difference = weight_difference(*restore(dir), *next);
  return difference.empty() ? "" : "after the next save, tensor " + difference + " differs";
}

int run(int trials, const std::string& worker, uint32_t seed, int mpi_every) {
  at::set_num_threads(1);
  world();  // a world of one, made before any fork
  std::mt19937 random(seed);
  const fs::path work = test::make_temp_dir();
  const fs::path parent = work / "checkpoints";
  fs::create_directories(parent);
  ::setenv("TMPDIR", work.c_str(), 1);
  ::setenv("OMP_NUM_THREADS", "1", 1);
  ::setenv("MTO_COLLECTIVE_TIMEOUT", "20", 0);

  int64_t generation = 1;
  ModulePtr previous = make_model(generation);
  auto start = Clock::now();
  save(*previous, (parent / kName).string());
  const double save_ms = ms_since(start);
  std::cout << "one save of " << size_of(parent / kName / shard_file_name(0, 1)) / 1000000 << " MB takes "
            << save_ms << " ms" << std::endl;

  int passed = 0;
  std::map<std::string, int> phases;
  std::map<std::string, int> kinds;
  const auto all = Clock::now();
  int trials_of_kind[2] = {0, 0};  // forked, mpirun: each kind cycles through the moments
  for (int i = 1; i <= trials; ++i) {
    Trial trial;
    trial.ranks = i % mpi_every ? 1 : 2 + (i / mpi_every) % 2;
    trial.victim = static_cast<int>(random() % trial.ranks);
    trial.moment = kMoments[trials_of_kind[trial.ranks > 1]++ % 6];
    if (trial.moment == "shard") trial.value = 0.05 + (random() % 90) / 100.0;
    if (trial.moment == "delay") trial.value = static_cast<double>(random() % static_cast<unsigned>(2 * save_ms + 1));
    const int64_t first = generation + 1;
    const ModulePtr models[2] = {make_model(first), make_model(first + 1)};
    const ModulePtr next = make_model(first + 2);
    start = Clock::now();
    const Killed killed = trial.ranks == 1 ? kill_forked_saver(trial, parent, first, models)
                                           : kill_mpi_rank(trial, work, worker, first);
    // The directory may hold the last save reported, or the one after it, which may have
    // committed without reporting.
    const ModulePtr& old_model = killed.last_saved < 0 ? previous : models[killed.last_saved - first];
    const ModulePtr& new_model = killed.last_saved < 0 ? models[0] : models[first + 1 - killed.last_saved];
    const size_t leftovers = hidden_entries(parent).size();
    std::string holds;
    std::string failure = killed.error;
    if (failure.empty()) failure = check(parent, old_model, new_model, next, holds);
    std::cout << "trial " << i << ": " << trial.ranks << (trial.ranks == 1 ? " process" : " ranks") << ", killed rank "
              << trial.victim << " at " << trial.moment << " " << trial.value << " during: " << killed.phase
              << "; " << leftovers << " leftover entries; holds the " << holds << " save; "
              << (failure.empty() ? "ok" : "FAIL: " + failure) << " (" << ms_since(start) / 1000 << " s)"
              << std::endl;
    if (failure.empty()) {
      ++passed;
      ++phases[killed.phase];
      ++kinds[trial.ranks == 1 ? "forked process" : "mpirun ranks"];
    } else {
      // Start the next trial from a clean directory.
      fs::remove_all(parent);
      fs::create_directories(parent);
      save(*next, (parent / kName).string());
    }
    previous = next;
    generation = first + 2;
  }
  std::cout << "== kills per phase (passed trials):\n";
  for (const auto& [phase, n] : phases) std::cout << "  " << n << "  " << phase << "\n";
  for (const auto& [kind, n] : kinds) std::cout << "  " << n << "  trials on " << kind << "\n";
  std::cout << "== crash injection: " << passed << " of " << trials << " trials passed in " << ms_since(all) / 1000
            << " s" << std::endl;
  fs::remove_all(work);
  return passed == trials ? 0 : 1;
}

}  // namespace
}  // namespace reliability
}  // namespace mto

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: crash_harness TRIALS WORKER [SEED] [MPI_EVERY]\n";
    return 64;
  }
  return mto::reliability::run(std::atoi(argv[1]), argv[2], argc > 3 ? static_cast<uint32_t>(std::atoll(argv[3])) : 12345,
                               argc > 4 ? std::max(1, std::atoi(argv[4])) : 5);
}
