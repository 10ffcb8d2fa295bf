// Checkpoint benchmark: mto::save, mto::save_async (blocking time and time to wait()) and
// mto::restore of a model of about 1 GiB (a stack of mto::nn::Linear layers) on the ranks
// this is launched with, both restore strategies,
// against baselines measured in the same run on rank 0:
//
//   raw write + fsync   the same bytes, one sequential file, written straight from the
//                       tensors' memory and through a reusable 512 KiB bounce buffer (as
//                       the library does); the faster of the two is the write baseline
//   raw read            the same file read() into memory the kernel has already written to
//                       (the read baseline), and into freshly mapped tensors
//   torch::save/load    the same state dict, torch::save followed by fsync
//
// Every operation runs --repeat times; the table shows the median and every run. Each file
// is read right after it was written, so reads come from the page cache, for the baselines
// and for mto alike.
//
//   mpirun -np 4 --oversubscribe checkpoint_bench [--mib 1024] [--repeat 3] [--dir DIR]
//   (tools/bench/checkpoint_bench.sh runs 1, 2 and 4 ranks)
#include <malloc.h>
#include <sys/mman.h>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "distributed/communicator.h"
#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "opt/model_like.h"
#include "opt/nn/linear.h"
#include "opt/save_async.h"
#include "opt/state_dict.h"
#include "serialization/bounce_buffer.h"
#include "serialization/checkpoint_reader.h"
#include "serialization/file.h"
#include "tools/bench/measure.h"

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

// `layers` Linear(width, width) layers: width * width * 4 bytes each, plus a bias.
class LinearStackImpl : public torch::nn::Module {
 public:
  LinearStackImpl(int layers, int64_t width) {
    for (int i = 0; i < layers; ++i) register_module("layer" + std::to_string(i), mto::nn::Linear(width, width));
  }
};

// The same, as a model-like: the checkpoint records it, so restore(dir) can build the model as
// `mto eval` does.
MTO_REGISTER_MODEL(checkpoint_bench_stack, [](const nlohmann::json& args) {
  return std::make_shared<LinearStackImpl>(args.at("layers").get<int>(), args.at("width").get<int64_t>());
});

// One run of an operation: its time, and how far the peak RSS rose above the RSS before it.
struct Sample {
  double seconds;
  int64_t rss_added;
};

// Runs `op` once, timing it; the RSS is read outside the timed region.
Sample sample(const std::function<void()>& op) {
  const int64_t before = status_bytes("VmRSS");
  reset_peak_rss();
  const auto start = Clock::now();
  op();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return {seconds, status_bytes("VmHWM") - before};
}

// The same, copying each tensor through the thread's reusable bounce buffer first, as the
// library's shard writer does (without its checksum).
void write_bounced(const std::vector<mto::NamedTensor>& tensors, const std::string& path) {
  mto::File file = mto::File::create(path);
  char* bounce = mto::bounce_buffer();
  for (const auto& t : tensors) {
    const char* data = static_cast<const char*>(t.tensor.data_ptr());
    const size_t size = t.tensor.nbytes();
    for (size_t done = 0; done < size;) {
      const size_t n = std::min(mto::kBounceBufferBytes, size - done);
      std::memcpy(bounce, data + done, n);
      file.write(bounce, n);
      done += n;
    }
  }
  file.sync();
  file.close();
}

// An uninitialized tensor like `t` on pages of its own that no one has touched yet: an
// anonymous mapping, unmapped when the tensor dies. (at::empty could hand back memory that
// the allocator recycled, which would make "fresh" depend on what ran before.)
void* map_fresh(size_t size) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  return p;
}

at::Tensor fresh_tensor_like(const at::Tensor& t) {
  const size_t size = t.nbytes();
  return at::from_blob(map_fresh(size), t.sizes(), [size](void* q) { ::munmap(q, size); },
                       t.options().requires_grad(false));
}

enum class Kind { kWrite, kRead };

// One line of the table.
struct Row {
  std::string name;
  Kind kind;
  std::vector<double> runs;
  int64_t rss_added = -1;  // worst run (and, for mto, worst rank); -1: not measured
  double seconds() const { return median(runs); }
};

// Runs `op` `repeat` times on rank 0 alone, `prepare` (untimed) before each run.
Row measure_alone(const std::string& name, Kind kind, int repeat, const std::function<void()>& prepare,
                  const std::function<void()>& op) {
  Row row{name, kind, {}};
  for (int i = 0; i < repeat; ++i) {
    prepare();
    const Sample s = sample(op);
    row.runs.push_back(s.seconds);
    if (kind == Kind::kRead) row.rss_added = std::max(row.rss_added, s.rss_added);
  }
  return row;
}

std::string strategy_name(mto::RestoreStrategy strategy) {
  return strategy == mto::RestoreStrategy::kReadAll ? "read all" : "read share + broadcast";
}

void print_table(const std::vector<Row>& rows, uint64_t bytes) {
  auto find = [&](const std::string& prefix) {
    for (const auto& r : rows) {
      if (r.name.rfind(prefix, 0) == 0) return r.seconds();
    }
    throw std::logic_error("no row " + prefix);
  };
  const double raw_write =
      std::min(find("raw write + fsync, from tensor memory"), find("raw write + fsync, via bounce"));
  const double raw_read = find("raw read, into kernel-warm memory");
  const double torch_save = find("torch::save"), torch_load = find("torch::load");

  std::printf("\n%-48s %9s %7s %10s %11s %12s  %s\n", "operation", "median s", "GB/s", "time/raw",
              "time/torch", "RSS added", "runs (s)");
  for (const auto& r : rows) {
    const double s = r.seconds();
    const bool write = r.kind == Kind::kWrite;
    std::string rss = "-";
    if (r.rss_added >= 0) rss = std::to_string(static_cast<long long>(r.rss_added >> 20)) + " MiB";
    std::string runs;
    for (double x : r.runs) {
      char run[32];
      std::snprintf(run, sizeof run, "%s%.3f", runs.empty() ? "" : " ", x);
      runs += run;
    }
    std::printf("%-48s %9.3f %7.2f %9.2fx %10.2fx %12s  %s\n", r.name.c_str(), s, bytes / s / 1e9,
                s / (write ? raw_write : raw_read), s / (write ? torch_save : torch_load), rss.c_str(),
                runs.c_str());
  }
  std::printf(
      "\ntime/raw: median time over the raw baseline's (writes: the faster raw write + fsync, %.3f s; reads:\n"
      "raw read into kernel-warm memory, %.3f s). time/torch: over torch::save + fsync (%.3f s) or torch::load\n"
      "(%.3f s). Below 1.00x is faster than the baseline. GB/s: model bytes over the median time. RSS added:\n"
      "peak RSS during the operation minus RSS before it, worst run (mto: worst rank); the restore target\n"
      "model is built before the timer, torch::load and the fresh-tensor read allocate their own.\n"
      "The first raw write from tensor memory is the kernel's first access to the model's pages; later runs\n"
      "find them warm. torch::load gets fresh pages on every run, as in a process that loads once (its\n"
      "previous tensors are freed and malloc_trim returns their pages before the next run).\n",
      raw_write, raw_read, torch_save, torch_load);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mto checkpoint benchmark: save and restore against raw I/O and torch::save/load"};
  int mib = 1024;
  int64_t width = 2048;
  int repeat = 3;
  std::string dir = (fs::temp_directory_path() / "mto-bench").string();
  app.add_option("--mib", mib, "model size in MiB (layers of width x width floats)")->check(CLI::PositiveNumber);
  app.add_option("--width", width, "width of each Linear layer")->check(CLI::PositiveNumber);
  app.add_option("--repeat", repeat, "runs of each operation; the table shows the median")->check(CLI::PositiveNumber);
  app.add_option("--dir", dir, "scratch directory (on the disk to measure)");
  CLI11_PARSE(app, argc, argv);

  try {
    at::set_num_threads(1);
    auto comm = mto::world();
    const int rank = comm->rank();
    const int ranks = comm->world_size();
    const int layers = std::max<int>(1, static_cast<int>((int64_t{mib} << 20) / (width * width * 4)));
    const std::string ckpt = dir + "/ckpt";
    const std::string raw = dir + "/raw.bin";
    const std::string pt = dir + "/torch.pt";
    if (rank == 0) fs::create_directories(dir);

    const int64_t rss_base = status_bytes("VmRSS");
    at::manual_seed(0);  // the same model on every rank
    auto model = mto::ModelLike("checkpoint_bench_stack", {{"layers", layers}, {"width", width}}).build();
    const auto tensors = mto::model_state_dict(*model);
    std::vector<at::Tensor> plain;
    for (const auto& t : tensors) plain.push_back(t.tensor);
    uint64_t bytes = 0;
    for (const auto& t : tensors) {
      if (!t.tensor.is_contiguous()) throw std::logic_error("tensor " + t.name + " is not contiguous");
      bytes += t.tensor.nbytes();
    }
    std::vector<Row> rows;
    std::vector<double> first_touch;  // memset of as many freshly mapped bytes, rank 0
    std::vector<double> build;        // building a fresh model before each restore
    const std::string load_at_start = load_average();

    if (rank == 0) {
      auto remove = [](const std::string& path) { return [path] { fs::remove(path); }; };
      auto nothing = [] {};
      // Writes. The first run from the model's memory is the kernel's first access to its
      // pages: see the runs column.
      rows.push_back(measure_alone("raw write + fsync, from tensor memory", Kind::kWrite, repeat, remove(raw),
                                   [&] { write_direct(plain, raw); }));
      rows.push_back(measure_alone("raw write + fsync, via bounce buffer (512 KiB)", Kind::kWrite, repeat,
                                   remove(raw), [&] { write_bounced(tensors, raw); }));
      rows.push_back(measure_alone("torch::save + fsync", Kind::kWrite, repeat, remove(pt), [&] {
        torch::serialize::OutputArchive archive;
        for (const auto& t : tensors) archive.write(t.name, t.tensor);
        archive.save_to(pt);
        mto::File::open(pt).sync();
      }));

      // Reads. Kernel-warm: one buffer, read into once before the timed runs.
      {
        std::vector<at::Tensor> warm;
        for (const auto& t : tensors) warm.push_back(at::empty(t.tensor.sizes(), t.tensor.options()));
        read_into(raw, warm);
        rows.push_back(measure_alone("raw read, into kernel-warm memory", Kind::kRead, repeat, nothing,
                                     [&] { read_into(raw, warm); }));
      }
      std::vector<at::Tensor> fresh;
      rows.push_back(measure_alone(
          "raw read, into freshly mapped tensors", Kind::kRead, repeat, [&] { fresh.clear(); },
          [&] {
            for (const auto& t : tensors) fresh.push_back(fresh_tensor_like(t.tensor));
            read_into(raw, fresh);
          }));
      fresh.clear();
      for (int i = 0; i < repeat; ++i) {
        char* p = static_cast<char*>(map_fresh(bytes));
        const Sample s = sample([&] { std::memset(p, 1, bytes); });
        ::munmap(p, bytes);
        first_touch.push_back(s.seconds);
      }
      std::vector<at::Tensor> loaded(tensors.size());
      rows.push_back(measure_alone(
          "torch::load", Kind::kRead, repeat,
          [&] {
            loaded.assign(tensors.size(), at::Tensor());
            ::malloc_trim(0);
          },
          [&] {
            torch::serialize::InputArchive archive;
            archive.load_from(pt);
            for (size_t i = 0; i < tensors.size(); ++i) archive.read(tensors[i].name, loaded[i]);
          }));
      loaded.clear();
      fs::remove(raw);
      fs::remove(pt);
    }

    // mto::save on every rank: each writes its shard. Rank 0 removes the previous checkpoint
    // before each run, outside the timer.
    Row save_row{"mto::save, " + std::to_string(ranks) + " rank(s)", Kind::kWrite, {}};
    for (int i = 0; i < repeat; ++i) {
      if (rank == 0) fs::remove_all(ckpt);
      comm->barrier();
      const Sample s = sample([&] {
        mto::save(*model, ckpt);
        comm->barrier();
      });
      save_row.runs.push_back(s.seconds);
    }
    rows.push_back(save_row);

    // mto::save_async: the time it blocks the caller (planning and the snapshot into the
    // staging pool, which the first run allocates and later runs reuse) and the time to wait().
    Row async_blocked{"mto::save_async, blocking, " + std::to_string(ranks) + " rank(s)", Kind::kWrite, {}};
    Row async_total{"mto::save_async, to wait(), " + std::to_string(ranks) + " rank(s)", Kind::kWrite, {}};
    for (int i = 0; i < repeat; ++i) {
      if (rank == 0) fs::remove_all(ckpt);
      comm->barrier();
      const auto start = std::chrono::steady_clock::now();
      mto::SaveHandle handle = mto::save_async(*model, ckpt);
      comm->barrier();
      async_blocked.runs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      handle.wait();
      comm->barrier();
      async_total.runs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    rows.push_back(async_blocked);
    rows.push_back(async_total);
    const uint64_t expected = digest(*model);
    model.reset();  // restore fills a fresh model; keep one model's worth of memory per rank

    // mto::restore, both strategies, alternating which goes first, each into a freshly
    // built model (allocated and initialized before the timer).
    const mto::RestoreStrategy strategies[] = {mto::RestoreStrategy::kReadAll,
                                               mto::RestoreStrategy::kReadShareBroadcast};
    std::vector<Row> restore_rows;
    for (auto strategy : strategies) {
      restore_rows.push_back(
          {"mto::restore, " + strategy_name(strategy) + ", " + std::to_string(ranks) + " rank(s)", Kind::kRead, {}});
    }
    for (int i = 0; i < repeat; ++i) {
      for (int j = 0; j < 2; ++j) {
        const int which = i % 2 ? 1 - j : j;
        mto::RestoreOptions options;
        options.strategy = strategies[which];
        const auto build_start = Clock::now();
        auto fresh = std::make_shared<LinearStackImpl>(layers, width);
        build.push_back(std::chrono::duration<double>(Clock::now() - build_start).count());
        comm->barrier();
        mto::ModulePtr restored;
        const Sample s = sample([&] {
          restored = mto::restore(fresh, ckpt, options);
          comm->barrier();
        });
        // Every rank checks its weights; every rank learns whether any failed.
        at::Tensor worst = at::tensor({static_cast<double>(s.rss_added), digest(*restored) != expected ? 1.0 : 0.0},
                                      at::kDouble);
        comm->all_reduce(worst, mto::ReduceOp::kMax);
        if (worst[1].item<double>() != 0) {
          throw std::runtime_error("restored weights differ from the saved ones (" + restore_rows[which].name + ")");
        }
        restore_rows[which].runs.push_back(s.seconds);
        restore_rows[which].rss_added =
            std::max(restore_rows[which].rss_added, static_cast<int64_t>(worst[0].item<double>()));
      }
    }
    rows.insert(rows.end(), restore_rows.begin(), restore_rows.end());

    // What a user sees: restore building the model from the checkpoint's model-like, reading
    // and verifying (as `mto eval` reports it), and `mto inspect --verify` on rank 0 alone.
    Row from_like{"mto::restore(dir): build from model-like + read, " + std::to_string(ranks) + " rank(s)",
                  Kind::kRead, {}};
    for (int i = 0; i < repeat; ++i) {
      ::malloc_trim(0);  // the last run's model goes back to the kernel: fresh pages, as in a new process
      comm->barrier();
      mto::ModulePtr restored;
      const Sample s = sample([&] {
        restored = mto::restore(ckpt);
        comm->barrier();
      });
      at::Tensor wrong = at::tensor({digest(*restored) != expected ? 1.0 : 0.0}, at::kDouble);
      comm->all_reduce(wrong, mto::ReduceOp::kMax);
      if (wrong.item<double>() != 0) throw std::runtime_error("restored weights differ from the saved ones");
      from_like.runs.push_back(s.seconds);
    }
    rows.push_back(from_like);
    if (rank == 0) {
      rows.push_back(measure_alone("verify_checkpoint (mto inspect --verify), rank 0", Kind::kRead, repeat, [] {},
                                   [&] { mto::verify_checkpoint(ckpt); }));
    }

    if (rank == 0) {
      std::printf("model: %.2f GiB in %zu tensors (%d x Linear(%ld, %ld)); %d rank(s) on %u core(s), backend %s;\n"
                  "%d run(s) each; scratch %s; process RSS before the model %.0f MiB\n"
                  "baselines: rank 0 alone (other ranks wait in a sleeping barrier); mto: every rank\n"
                  "load average at start %s, at end %s\n",
                  bytes / double(1 << 30), tensors.size(), layers, static_cast<long>(width), static_cast<long>(width),
                  ranks, std::thread::hardware_concurrency(), comm->backend_name().c_str(), repeat, dir.c_str(),
                  rss_base / double(1 << 20), load_at_start.c_str(), load_average().c_str());
      print_table(rows, bytes);
      std::printf("context, not in any time above: memset of %.2f GiB of freshly mapped memory %.3f s; building a\n"
                  "fresh model (allocate + init, before each restore) %.3f s (medians, rank 0)\n",
                  bytes / double(1 << 30), median(first_touch), median(build));
      std::printf("save_async blocks %.3f s, %.2fx the synchronous save (%.3f s); the whole save to wait() %.3f s\n",
                  async_blocked.seconds(), async_blocked.seconds() / save_row.seconds(), save_row.seconds(),
                  async_total.seconds());
      const double all = restore_rows[0].seconds(), share = restore_rows[1].seconds();
      if (ranks == 1) std::printf("(on one rank both strategies read everything: the same code path)\n");
      std::printf("faster restore on %d rank(s): %s (%.3f s vs %.3f s, %.2fx)\n", ranks,
                  strategy_name(all <= share ? strategies[0] : strategies[1]).c_str(), std::min(all, share),
                  std::max(all, share), std::max(all, share) / std::min(all, share));
    }
    comm->barrier();
    if (rank == 0) fs::remove_all(ckpt);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "checkpoint_bench: " << e.what() << "\n";
    return 1;
  }
}
