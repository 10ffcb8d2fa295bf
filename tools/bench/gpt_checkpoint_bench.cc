// Checkpoint benchmark of a model split over a tensor-parallel mesh: a zoo GPT (vocab 256,
// 16 heads, context 64; about 12 * depth * width^2 parameters) built on
// Mesh::create(world(), --tp), each rank holding only its slices, saved with mto::save and
// restored with mto::restore onto each tp of --restore-tp (a mesh of every rank, so
// (world / tp, tp)), against baselines measured in the same run, on every rank at once:
//
//   raw write + fsync   each rank writes its share of the checkpoint's bytes (each slice and
//                       each whole tensor once, spread over the ranks that hold it by bytes,
//                       as mto::save spreads them) into a file of its own, straight from the
//                       tensors' memory, and fsyncs it (the save baseline)
//   raw read            each rank read()s its file back into memory it has already written
//                       to (the restore baseline)
//
// The ranks start each run together (a barrier); a run's time is the slowest rank's. Every
// operation runs --repeat times; the table shows the median and every run. Files are read
// right after they were written, so reads come from the page cache, for the baselines and
// for mto alike. Each restore fills a model built (and zeroed) before the timer, and is
// checked against the weights the same seed gives at that tp.
//
// Peak RSS: the high-water mark of each rank's resident memory during each run (VmHWM, reset
// before the run), divided by the bytes of the model that rank holds then (its own slices
// and whole tensors: the source model for the baselines and save, the target model for a
// restore); the table shows the worst rank and run.
//
//   mpirun -np 4 gpt_checkpoint_bench [--width 2048] [--depth 16] [--tp 4] [--repeat 3]
//                                     [--dir DIR] [--restore-tp 4,2,1]
//   (tools/bench/gpt_checkpoint_bench.sh runs it on 4 ranks)
#include <malloc.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/utils.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "distributed/communicator.h"
#include "distributed/mesh.h"
#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "opt/state_dict.h"
#include "tools/bench/measure.h"
#include "tools/zoo/gpt.h"

namespace {

using Clock = std::chrono::steady_clock;
using mto::bench::digest;
using mto::bench::load_average;
using mto::bench::median;
using mto::bench::read_into;
using mto::bench::reset_peak_rss;
using mto::bench::status_bytes;
using mto::bench::write_direct;
namespace fs = std::filesystem;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Bytes of the tensors this rank holds (its slices and its whole tensors).
uint64_t own_bytes(const torch::nn::Module& model) {
  uint64_t bytes = 0;
  for (const auto& t : mto::model_state_dict(model)) bytes += t.tensor.nbytes();
  return bytes;
}

// Bytes of the global model: each split tensor at its global shape, each whole one once.
uint64_t global_bytes(const torch::nn::Module& model) {
  uint64_t bytes = 0;
  for (const auto& t : mto::model_state_slices(model)) {
    if (!t.slice) {
      bytes += t.tensor.nbytes();
      continue;
    }
    uint64_t numel = 1;
    for (int64_t d : t.slice->global_shape) numel *= static_cast<uint64_t>(d);
    bytes += numel * t.tensor.element_size();
  }
  return bytes;
}

// This rank's share of the checkpoint's bytes: the tensors it would write if each part
// (each slice of a split tensor, each whole tensor) were written once, by one of the ranks
// that hold it, chosen greedily by bytes written so far (lowest rank on a tie), in state-dict
// order (mto::save's plan takes the largest parts first, so the two spreads can differ a
// little). The shares of all ranks add up to the global bytes.
// Collective over `mesh->world()`.
std::vector<at::Tensor> write_share(const torch::nn::Module& model, const mto::Mesh& mesh) {
  const auto& comm = mesh.world();
  const auto tensors = mto::model_state_slices(model);
  const int64_t n = static_cast<int64_t>(tensors.size());
  // Row 0: this rank's tp index and tensor count; row 1 + j: tensor j's bytes, split or not.
  at::Tensor mine = at::zeros({n + 1, 2}, at::kLong);
  mine[0][0] = mesh.tp_index();
  mine[0][1] = n;
  for (int64_t j = 0; j < n; ++j) {
    const auto& t = tensors[j];
    if (!t.tensor.is_contiguous()) throw std::logic_error("tensor " + t.name + " is not contiguous");
    mine[j + 1][0] = static_cast<int64_t>(t.tensor.nbytes());
    mine[j + 1][1] = t.slice ? 1 : 0;
  }
  // Every rank has the same keys; a different count would make the gathers differ in shape.
  at::Tensor count = at::tensor({n, -n}, at::kLong);
  comm->all_reduce(count, mto::ReduceOp::kMax);
  if (count[0].item<int64_t>() != -count[1].item<int64_t>()) {
    throw std::logic_error("the ranks hold different numbers of tensors");
  }
  const std::vector<at::Tensor> all = comm->all_gather(mine);
  const int ranks = comm->world_size();
  std::vector<uint64_t> load(ranks, 0);
  std::vector<at::Tensor> share;
  for (int64_t j = 0; j < n; ++j) {
    const bool split = all[comm->rank()][j + 1][1].item<int64_t>() != 0;
    // The parts of tensor j: one per tp index if split, else one, held by every rank.
    const int parts = split ? mesh.tp_size() : 1;
    for (int part = 0; part < parts; ++part) {
      int owner = -1;
      for (int r = 0; r < ranks; ++r) {
        if (split && all[r][0][0].item<int64_t>() != part) continue;
        if (owner < 0 || load[r] < load[owner]) owner = r;
      }
      load[owner] += static_cast<uint64_t>(all[owner][j + 1][0].item<int64_t>());
      if (owner == comm->rank()) share.push_back(tensors[j].tensor);
    }
  }
  return share;
}

// One run of a phase, over every rank: the slowest rank's time, the highest peak RSS, the
// highest peak RSS over the rank's own model bytes, and the highest peak RSS above the
// process's RSS before any model over the own bytes.
struct Run {
  double seconds;
  double peak_rss;
  double peak_over_own;
  double added_over_own;
};

// Runs `op` on every rank from a barrier to a barrier, timing it and measuring its peak RSS;
// `own` is the bytes of the model this rank holds during the run, `base` the rank's RSS
// before any model. The time runs to the closing barrier, so it is the wall time until the
// last rank is done: ranks oversubscribed on few cores leave the first barrier at different
// moments, and a rank's own time alone would credit an operation with the cores the others
// had not taken yet. Collective.
Run run_phase(mto::Communicator& comm, uint64_t own, int64_t base, const std::function<void()>& op) {
  comm.barrier();
  reset_peak_rss();
  const auto start = Clock::now();
  op();
  comm.barrier();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const double peak = static_cast<double>(status_bytes("VmHWM"));
  at::Tensor worst = at::tensor(
      {seconds, peak, peak / static_cast<double>(own), (peak - static_cast<double>(base)) / static_cast<double>(own)},
      at::kDouble);
  comm.all_reduce(worst, mto::ReduceOp::kMax);
  comm.barrier();
  return {worst[0].item<double>(), worst[1].item<double>(), worst[2].item<double>(), worst[3].item<double>()};
}

enum class Kind { kWrite, kRead };

// One line of the table.
struct Row {
  std::string name;
  Kind kind;
  std::vector<double> runs;
  double peak_rss = 0;       // worst run, worst rank
  double peak_over_own = 0;   // worst run, worst rank
  double added_over_own = 0;  // worst run, worst rank
  double seconds() const { return median(runs); }
  void add(const Run& run) {
    runs.push_back(run.seconds);
    peak_rss = std::max(peak_rss, run.peak_rss);
    peak_over_own = std::max(peak_over_own, run.peak_over_own);
    added_over_own = std::max(added_over_own, run.added_over_own);
  }
};

std::string format_runs(const std::vector<double>& runs) {
  std::string out;
  for (double x : runs) {
    char run[32];
    std::snprintf(run, sizeof run, "%s%.3f", out.empty() ? "" : " ", x);
    out += run;
  }
  return out;
}

// A progress line on rank 0.
void progress(int rank, const std::string& line) {
  if (rank != 0) return;
  std::printf("# %s\n", line.c_str());
  std::fflush(stdout);
}

std::string seconds_text(double s) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3f s", s);
  return text;
}

std::string gib_text(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3f GiB", bytes / kGiB);
  return text;
}

// A restore target's line of the memory report.
struct RestoreMemory {
  std::string mesh;
  double own_max = 0;  // the largest own bytes of any rank
  double peak_rss = 0;
  double peak_over_own = 0;
  double added_over_own = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mto checkpoint benchmark of a tensor-parallel GPT: save and restore against raw I/O"};
  int64_t width = 2048;
  int64_t depth = 16;
  int tp = 4;
  int repeat = 3;
  std::string dir = (fs::temp_directory_path() / "mto-gpt-bench").string();
  std::vector<int> restore_tps = {4, 2, 1};
  app.add_option("--width", width, "GPT width (divisible by its 16 heads)")->check(CLI::PositiveNumber);
  app.add_option("--depth", depth, "GPT blocks")->check(CLI::PositiveNumber);
  app.add_option("--tp", tp, "tensor-parallel size of the saved model (divides the ranks and 16)")
      ->check(CLI::PositiveNumber);
  app.add_option("--repeat", repeat, "runs of each operation; the table shows the median")->check(CLI::PositiveNumber);
  app.add_option("--dir", dir, "scratch directory (on the disk to measure)");
  app.add_option("--restore-tp", restore_tps, "tensor-parallel sizes to restore onto, comma-separated")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  int scratch_rank = -1;  // for the cleanup after an error: set once the rank is known
  try {
    torch::set_num_threads(1);
    auto comm = mto::world();
    const int rank = comm->rank();
    scratch_rank = rank;
    const int ranks = comm->world_size();
    const std::string ckpt = dir + "/ckpt";
    const std::string raw = dir + "/raw-" + std::to_string(rank) + ".bin";
    // Rank 0 removes the directory at the end only if it made it (and it is empty by then).
    const bool made_dir = rank == 0 && fs::create_directories(dir);
    comm->barrier();

    // Whether resetting VmHWM works here; if not, every peak is the process's peak so far.
    reset_peak_rss();
    const int64_t rss_base = status_bytes("VmRSS");
    const bool peak_resets = status_bytes("VmHWM") <= rss_base + (int64_t{16} << 20);
    const std::string load_at_start = load_average();

    auto gpt_options = [&](std::shared_ptr<mto::Mesh> mesh) {
      return mto::zoo::GptOptions().vocab(256).width(width).depth(depth).heads(16).context(64).seed(0).mesh(
          std::move(mesh));
    };

    // The source model, each rank its slices.
    progress(rank, "building the GPT on tp " + std::to_string(tp));
    auto mesh = mto::Mesh::create(comm, tp);
    const auto build_start = Clock::now();
    mto::zoo::Gpt model(gpt_options(mesh));
    const double build_seconds = std::chrono::duration<double>(Clock::now() - build_start).count();
    const uint64_t bytes = global_bytes(*model);
    const uint64_t own = own_bytes(*model);
    at::Tensor own_range = at::tensor({static_cast<double>(own), -static_cast<double>(own)}, at::kDouble);
    comm->all_reduce(own_range, mto::ReduceOp::kMax);
    const size_t tensor_count = mto::model_state_dict(*model).size();
    progress(rank, "model " + mesh->describe() + ": global " + std::to_string(bytes) + " bytes (" + gib_text(bytes) +
                       "), rank 0 holds " + std::to_string(own) + " bytes (" + gib_text(own) + "); built in " +
                       seconds_text(build_seconds));

    std::vector<Row> rows;

    // Baselines: each rank its share of the checkpoint's bytes, one file per rank.
    {
      const std::vector<at::Tensor> share = write_share(*model, *mesh);
      uint64_t share_bytes = 0;
      for (const auto& t : share) share_bytes += t.nbytes();
      at::Tensor total = at::tensor({static_cast<double>(share_bytes)}, at::kDouble);
      comm->all_reduce(total, mto::ReduceOp::kSum);
      if (static_cast<uint64_t>(total.item<double>()) != bytes) {
        throw std::logic_error("the raw shares add up to " + std::to_string(total.item<double>()) +
                               " bytes, not the model's " + std::to_string(bytes));
      }

      Row write{"raw write + fsync, from tensor memory", Kind::kWrite, {}};
      for (int i = 0; i < repeat; ++i) {
        fs::remove(raw);
        write.add(run_phase(*comm, own, rss_base, [&] { write_direct(share, raw); }));
        progress(rank, "raw write + fsync run " + std::to_string(i + 1) + ": " + seconds_text(write.runs.back()));
      }
      rows.push_back(write);

      // Kernel-warm destination: written once (by an untimed read) before the timed runs.
      std::vector<at::Tensor> warm;
      for (const auto& t : share) warm.push_back(at::empty(t.sizes(), t.options()));
      read_into(raw, warm);
      Row read{"raw read, into kernel-warm memory", Kind::kRead, {}};
      for (int i = 0; i < repeat; ++i) {
        read.add(run_phase(*comm, own, rss_base, [&] { read_into(raw, warm); }));
        progress(rank, "raw read run " + std::to_string(i + 1) + ": " + seconds_text(read.runs.back()));
      }
      rows.push_back(read);
      warm.clear();
      fs::remove(raw);
      ::malloc_trim(0);
    }

    // mto::save of the split model. Rank 0 removes the previous checkpoint before each run.
    {
      Row save{"mto::save, " + mesh->describe(), Kind::kWrite, {}};
      mto::SaveOptions options;
      options.communicator = comm;
      for (int i = 0; i < repeat; ++i) {
        if (rank == 0) fs::remove_all(ckpt);
        save.add(run_phase(*comm, own, rss_base, [&] { mto::save(*model, ckpt, options); }));
        progress(rank, "mto::save run " + std::to_string(i + 1) + ": " + seconds_text(save.runs.back()));
      }
      rows.push_back(save);
    }
    model = nullptr;  // each restore fills a model of its own: keep one model's worth per rank
    ::malloc_trim(0);

    // mto::restore onto each tp, each run into a model built, checked and zeroed before the
    // timer. The seed alone gives the global weights, so the fresh model's digest is what
    // the restored one must have.
    std::vector<RestoreMemory> memory;
    std::vector<std::string> skipped;
    for (int restore_tp : restore_tps) {
      if (ranks % restore_tp != 0) {
        skipped.push_back(std::to_string(restore_tp) + " (does not divide " + std::to_string(ranks) + " ranks)");
        continue;
      }
      auto target_mesh = restore_tp == tp ? mesh : mto::Mesh::create(comm, restore_tp);
      Row restore{"mto::restore onto " + target_mesh->describe(), Kind::kRead, {}};
      RestoreMemory mem{target_mesh->describe()};
      mto::RestoreOptions options;
      options.communicator = comm;
      options.strategy = mto::RestoreStrategy::kReadAll;
      for (int i = 0; i < repeat; ++i) {
        auto target = std::make_shared<mto::zoo::GptImpl>(gpt_options(target_mesh));
        const uint64_t expected = digest(*target);
        {
          torch::NoGradGuard no_grad;
          for (const auto& t : mto::model_state_dict(*target)) t.tensor.zero_();
        }
        const uint64_t target_own = own_bytes(*target);
        mto::ModulePtr restored;
        restore.add(run_phase(*comm, target_own, rss_base, [&] { restored = mto::restore(target, ckpt, options); }));
        at::Tensor bad = at::tensor({digest(*restored) != expected ? 1.0 : 0.0, static_cast<double>(target_own)},
                                    at::kDouble);
        comm->all_reduce(bad, mto::ReduceOp::kMax);
        if (bad[0].item<double>() != 0) {
          throw std::runtime_error("restored weights differ from the saved ones (" + restore.name + ")");
        }
        mem.own_max = bad[1].item<double>();
        progress(rank, restore.name + " run " + std::to_string(i + 1) + ": " + seconds_text(restore.runs.back()));
        restored = nullptr;
        target = nullptr;
        ::malloc_trim(0);
      }
      mem.peak_rss = restore.peak_rss;
      mem.peak_over_own = restore.peak_over_own;
      mem.added_over_own = restore.added_over_own;
      memory.push_back(mem);
      rows.push_back(restore);
    }

    if (rank == 0) {
      auto find = [&](const std::string& prefix) {
        for (const auto& r : rows) {
          if (r.name.rfind(prefix, 0) == 0) return r.seconds();
        }
        throw std::logic_error("no row " + prefix);
      };
      const double raw_write = find("raw write + fsync"), raw_read = find("raw read");
      std::printf("\nmodel: zoo GPT width %ld, depth %ld, 16 heads, vocab 256, context 64: %zu tensors, %.3f GiB\n"
                  "(%llu bytes) global, saved from %s; own bytes per rank %.3f..%.3f GiB (rank 0: %.3f GiB)\n"
                  "%d rank(s) on %u core(s), backend %s; %d run(s) each; scratch %s; process RSS before the model\n"
                  "%.0f MiB (rank 0); load average at start %s, at end %s\n",
                  static_cast<long>(width), static_cast<long>(depth), tensor_count, bytes / kGiB,
                  static_cast<unsigned long long>(bytes), mesh->describe().c_str(), -own_range[1].item<double>() / kGiB,
                  own_range[0].item<double>() / kGiB, own / kGiB, ranks, std::thread::hardware_concurrency(),
                  comm->backend_name().c_str(), repeat, dir.c_str(), rss_base / double(1 << 20), load_at_start.c_str(),
                  load_average().c_str());
      std::printf("\n%-40s %9s %7s %9s %10s %8s %13s  %s\n", "operation", "median s", "GB/s", "time/raw",
                  "peak RSS", "RSS/own", "(RSS-base)/own", "runs (s)");
      for (const auto& r : rows) {
        const double s = r.seconds();
        char peak[32];
        std::snprintf(peak, sizeof peak, "%.2f GiB", r.peak_rss / kGiB);
        std::printf("%-40s %9.3f %7.2f %8.2fx %10s %7.2fx %13.2fx  %s\n", r.name.c_str(), s, bytes / s / 1e9,
                    s / (r.kind == Kind::kWrite ? raw_write : raw_read), peak, r.peak_over_own, r.added_over_own,
                    format_runs(r.runs).c_str());
      }
      std::printf(
          "\ntime/raw: median time over the baseline's (save: raw write + fsync, %.3f s; restore: raw read into\n"
          "kernel-warm memory, %.3f s). Below 1.00x is faster than the baseline. GB/s: global model bytes over\n"
          "the median time. Every time runs from a barrier to the barrier after the last rank. peak RSS: the highest resident memory of any rank\n"
          "during a run, worst run; RSS/own: a rank's peak RSS over the bytes of the model it holds then (the\n"
          "source model's slices, or the restore target's), worst rank and run; it includes the process's own\n"
          "%.0f MiB (rank 0) before any model, which (RSS-base)/own leaves out (1.00x: nothing beyond the model).%s\n",
          raw_write, raw_read, rss_base / double(1 << 20),
          peak_resets ? "" : "\nNOTE: VmHWM could not be reset here: each peak is the process's peak so far.");
      std::printf("\npeak RSS per rank during mto::restore (max over ranks) vs own slice bytes:\n");
      for (const auto& m : memory) {
        std::printf("  onto %-14s peak RSS %8.3f GiB, own slices %8.3f GiB: %.2fx; (RSS-base)/own %.2fx\n",
                    m.mesh.c_str(), m.peak_rss / kGiB, m.own_max / kGiB, m.peak_over_own, m.added_over_own);
      }
      for (const auto& s : skipped) std::printf("  restore tp %s: skipped\n", s.c_str());
    }
    comm->barrier();
    if (rank == 0) {
      fs::remove_all(ckpt);
      std::error_code ignored;
      if (made_dir) fs::remove(dir, ignored);
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "gpt_checkpoint_bench: " << e.what() << "\n";
    // Leave no scratch file of this rank behind (rank 0 also the checkpoint, best effort).
    if (scratch_rank >= 0) {
      std::error_code ignored;
      fs::remove(dir + "/raw-" + std::to_string(scratch_rank) + ".bin", ignored);
      if (scratch_rank == 0) fs::remove_all(dir + "/ckpt", ignored);
    }
    return 1;
  }
}
