// Checkpoint benchmark: mto::save and mto::restore of a model of about 1 GiB (a stack of
// mto::nn::Linear layers) on the ranks this is launched with, against baselines measured in
// the same run on rank 0: a raw sequential write + fsync of the same bytes, torch::save +
// fsync, a raw read() into memory that is already touched, and torch::load.
//
//   mpirun -np 4 --oversubscribe checkpoint_bench [--mib 1024] [--dir /tmp/mto-bench]
//   (tools/bench/checkpoint_bench.sh runs 1, 2 and 4 ranks)
#include <fcntl.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "opt/nn/linear.h"
#include "opt/state_dict.h"
#include "serialization/checksum.h"
#include "serialization/file.h"

namespace {

using Clock = std::chrono::steady_clock;

// `layers` Linear(width, width) layers: width * width * 4 bytes each, plus a bias.
class LinearStackImpl : public torch::nn::Module {
 public:
  LinearStackImpl(int layers, int64_t width) {
    for (int i = 0; i < layers; ++i) register_module("layer" + std::to_string(i), mto::nn::Linear(width, width));
  }
};

double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Resident set size now and its peak, in bytes (Linux /proc/self/status).
uint64_t status_bytes(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoull(line.substr(key.size() + 1)) * 1024;
  }
  return 0;
}

// Starts a new peak-RSS measurement (writing 5 to clear_refs resets VmHWM).
void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

uint64_t digest(torch::nn::Module& model) {
  uint64_t h = 0;
  for (const auto& t : mto::model_state_dict(model)) {
    h = h * 1000003 ^ mto::xxh3_64(t.tensor.data_ptr(), t.tensor.nbytes());
  }
  return h;
}

struct Row {
  std::string name;
  double seconds;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mto checkpoint benchmark: save and restore against raw I/O and torch::save/load"};
  int mib = 1024;
  int64_t width = 2048;
  std::string dir = (std::filesystem::temp_directory_path() / "mto-bench").string();
  app.add_option("--mib", mib, "model size in MiB (layers of width x width floats)")->check(CLI::PositiveNumber);
  app.add_option("--width", width, "width of each Linear layer")->check(CLI::PositiveNumber);
  app.add_option("--dir", dir, "scratch directory (on the disk to measure)");
  CLI11_PARSE(app, argc, argv);

  try {
    at::set_num_threads(1);
    auto comm = mto::world();
    const int rank = comm->rank();
    const int layers = std::max<int>(1, static_cast<int>((int64_t{mib} << 20) / (width * width * 4)));
    std::filesystem::create_directories(dir);
    const std::string ckpt = dir + "/ckpt";
    const std::string raw = dir + "/raw.bin";
    const std::string pt = dir + "/torch.pt";

    const uint64_t rss_base = status_bytes("VmRSS");
    at::manual_seed(0);  // the same model on every rank
    auto model = std::make_shared<LinearStackImpl>(layers, width);
    const auto tensors = mto::model_state_dict(*model);
    uint64_t bytes = 0;
    for (const auto& t : tensors) bytes += t.tensor.nbytes();
    std::vector<Row> rows;

    if (rank == 0) {
      // Raw sequential write + fsync of the same bytes.
      auto start = Clock::now();
      {
        mto::File f = mto::File::create(raw);
        for (const auto& t : tensors) f.write(t.tensor.data_ptr(), t.tensor.nbytes());
        f.sync();
        f.close();
      }
      rows.push_back({"raw write + fsync (1 writer)", since(start)});

      // Raw read() into memory that is already touched: the model's own tensors.
      start = Clock::now();
      {
        mto::File f = mto::File::open(raw);
        uint64_t offset = 0;
        for (const auto& t : tensors) {
          f.read_at(t.tensor.data_ptr(), t.tensor.nbytes(), offset);
          offset += t.tensor.nbytes();
        }
      }
      rows.push_back({"raw read into touched memory", since(start)});

      // torch::save of the same state dict, then fsync.
      start = Clock::now();
      {
        torch::serialize::OutputArchive archive;
        for (const auto& t : tensors) archive.write(t.name, t.tensor);
        archive.save_to(pt);
        mto::File f = mto::File::open(pt);
        f.sync();
      }
      rows.push_back({"torch::save + fsync", since(start)});

      start = Clock::now();
      {
        torch::serialize::InputArchive archive;
        archive.load_from(pt);
        std::vector<at::Tensor> loaded(tensors.size());
        for (size_t i = 0; i < tensors.size(); ++i) archive.read(tensors[i].name, loaded[i]);
      }
      rows.push_back({"torch::load", since(start)});
      std::filesystem::remove(raw);
      std::filesystem::remove(pt);
    }

    comm->barrier();
    auto start = Clock::now();
    mto::save(*model, ckpt);
    comm->barrier();
    rows.push_back({"mto::save on " + std::to_string(comm->world_size()) + " rank(s)", since(start)});
    const uint64_t expected = digest(*model);
    model.reset();

    std::vector<std::pair<std::string, double>> rss;
    for (auto strategy : {mto::RestoreStrategy::kReadAll, mto::RestoreStrategy::kReadShareBroadcast}) {
      const std::string label = strategy == mto::RestoreStrategy::kReadAll ? "read all" : "read share + broadcast";
      auto fresh = std::make_shared<LinearStackImpl>(layers, width);
      const uint64_t before = status_bytes("VmRSS");
      comm->barrier();
      reset_peak_rss();
      start = Clock::now();
      auto restored = mto::restore(fresh, ckpt, {nullptr, strategy});
      comm->barrier();
      rows.push_back({"mto::restore, " + label + ", " + std::to_string(comm->world_size()) + " rank(s)", since(start)});
      const uint64_t peak = status_bytes("VmHWM");
      if (digest(*restored) != expected) throw std::runtime_error("restored weights differ from the saved ones");
      // The peak over all ranks of what restore added on top of the process and its model.
      at::Tensor worst = at::tensor({static_cast<double>(peak - before)}, at::kDouble);
      comm->all_reduce(worst, mto::ReduceOp::kMax);
      rss.emplace_back(label, worst.item<double>());
    }

    if (rank == 0) {
      auto find = [&](const std::string& prefix) {
        for (const auto& r : rows) {
          if (r.name.rfind(prefix, 0) == 0) return r.seconds;
        }
        return 0.0;
      };
      const double write = find("raw write"), read = find("raw read"), tsave = find("torch::save"),
                   tload = find("torch::load");
      std::printf("model: %.2f GiB in %zu tensors (%d x Linear(%ld, %ld)); %d rank(s), backend %s; process RSS before the model %.0f MiB\n",
                  bytes / double(1 << 30), tensors.size(), layers, static_cast<long>(width), static_cast<long>(width),
                  comm->world_size(), comm->backend_name().c_str(), rss_base / double(1 << 20));
      std::printf("%-44s %8s %8s %12s %14s\n", "operation", "seconds", "GB/s", "vs raw I/O", "vs torch");
      for (const auto& r : rows) {
        const bool is_save = r.name.find("save") != std::string::npos || r.name.find("write") != std::string::npos;
        const double raw_io = is_save ? write : read;
        const double torch_io = is_save ? tsave : tload;
        std::printf("%-44s %8.3f %8.2f %11.2fx %13.2fx\n", r.name.c_str(), r.seconds, bytes / r.seconds / 1e9,
                    raw_io / r.seconds, torch_io / r.seconds);
      }
      for (const auto& [label, added] : rss) {
        std::printf("peak RSS during restore (%s), worst rank: model %.2f GiB + %.1f MiB added = %.3fx the model size\n",
                    label.c_str(), bytes / double(1 << 30), added / double(1 << 20), (bytes + added) / bytes);
      }
    }
    comm->barrier();
    if (rank == 0) std::filesystem::remove_all(ckpt);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "checkpoint_bench: " << e.what() << "\n";
    return 1;
  }
}
