// mto: train, optimize, evaluate, inspect and sample from models (Fashion-MNIST classifiers
// and a GPT on text), on one process or on the ranks mpirun launches, on any mesh.
//
//   mpirun -np 4 mto train --model fashion_cnn --epochs 2 --out ckpt/float
//   mpirun -np 4 mto optimize ckpt/float --mode quantize:int8 --out ckpt/int8
//   mpirun -np 2 mto eval ckpt/int8
//   mto inspect ckpt/int8 --verify
//   mpirun -np 4 mto train --model gpt --tp 2 --out ckpt/gpt
//   mto generate ckpt/gpt --prompt 'The ' --tokens 100
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <cxxabi.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

#include <CLI/CLI.hpp>

#include "distributed/world.h"
#include "opt/version.h"
#include "tools/cli/commands.h"
#include "tools/cli/validators.h"
#include "tools/common/heap.h"

namespace mto {
namespace cli {

bool is_first_rank() {
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
  return rank == nullptr || std::string(rank) == "0";
}

namespace {

// The first argument that is neither an option of `app` itself nor an option's value: the
// subcommand the user typed; "" when there is none.
std::string typed_command(const CLI::App& app, int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.empty() || arg[0] != '-') return arg;
    const std::string name = arg.substr(0, arg.find('='));
    const CLI::Option* option = app.get_option_no_throw(name);
    if (option != nullptr && option->get_items_expected_min() > 0 && arg.find('=') == std::string::npos) ++i;
  }
  return "";
}

// Returns `code`, the exit status of an error in the arguments, which every rank meets alike
// and rank 0 alone reports. Under mpirun a failing rank first waits in a barrier for all the
// others, rank 0 having reported by then: mpirun kills the job's processes as soon as one of
// them exits non-zero, and a rank that left early could kill rank 0 before its message was out.
int exit_together(int code) {
  if (code == 0 || !mto::launched_by_mpirun()) return code;
  mto::WorldOptions options;
  options.backend = mto::BackendKind::kMpi;
  options.timeout = std::chrono::seconds(60);
  options.announce = false;
  try {
    mto::init_world(options)->barrier();
  } catch (const std::exception&) {
    // A rank missing from the barrier: leave with the error's status all the same.
  }
  return code;
}

// The line that reports `e`: "mto: error: MESSAGE\n", LibTorch's message without the C++
// stack trace its what() appends, and with `verbose` the error's type by its C++ name.
std::string error_line(const std::exception& e, bool verbose) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&e);
  std::string line = "mto: error: ";
  line += torch_error != nullptr ? torch_error->what_without_backtrace() : e.what();
  if (verbose) {
    int status = 0;
    char* name = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status);
    line += std::string(" [") + (status == 0 ? name : typeid(e).name()) + "]";
    std::free(name);
  }
  return line + "\n";
}

}  // namespace

}  // namespace cli
}  // namespace mto

int main(int argc, char** argv) {
  using namespace mto::cli;
  mto::tools::keep_freed_memory_in_heap();
  // Past a file-size limit (ulimit -f), a write fails with EFBIG and the save reports it and
  // cleans up, where the default SIGXFSZ would kill mto mid-save.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{
      "mto: optimize LibTorch models as chains of modes and save and restore them as sharded, checksummed "
      "checkpoints on any number of mpirun ranks."};
  app.require_subcommand(1);
  // Usage errors as one line like every other error (CLI11 adds "Run with --help ..." on a
  // second). Set before the subcommands are added: they copy it.
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "mto: error: " + std::string(e.what()) + " (--help lists the options)\n";
  });
  // -v and --threads may follow the command too (mto eval ckpt -v).
  app.fallthrough();
  app.set_version_flag("--version", std::string("mto ") + mto::kModeloptVersion);
  bool verbose = false;
  int threads = 1;
  app.add_flag("-v,--verbose", verbose, "On an error, also print its type and every rank's message");
  app.add_option("--threads", threads, "Intra-op threads per rank (ranks usually share the cores), at most 1024")
      ->capture_default_str()
      ->check(count_up_to(1024));
  app.parse_complete_callback([&threads] {
    const unsigned cores = std::thread::hardware_concurrency();
    if (cores > 0 && static_cast<unsigned>(threads) > cores && is_first_rank()) {
      std::cerr << "mto: warning: --threads " << threads << " is more than the " << cores
                << " cores of this machine, which slows every rank down" << std::endl;
    }
    at::set_num_threads(threads);
  });
  add_train_command(app);
  add_optimize_command(app);
  add_eval_command(app);
  add_inspect_command(app);
  add_generate_command(app);
  add_import_command(app);
  add_export_command(app);
  // CLI11 takes an unknown word for a stray argument ("A subcommand is required", or the
  // main help with --help): name it instead.
  const std::string command = typed_command(app, argc, argv);
  std::vector<std::string> names;
  for (const CLI::App* sub : static_cast<const CLI::App&>(app).get_subcommands([](const CLI::App*) { return true; })) {
    names.push_back(sub->get_name());
  }
  if (!command.empty() && std::find(names.begin(), names.end(), command) == names.end()) {
    if (is_first_rank()) {
      std::cerr << "mto: error: unknown command '" << command << "' (commands: " << CLI::detail::join(names, ", ")
                << "; mto --help lists them)" << std::endl;
    }
    return exit_together(1);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Every rank parses the same arguments: let rank 0 alone print help and usage errors.
    return exit_together(is_first_rank() ? app.exit(e) : e.get_exit_code());
  } catch (const std::exception& e) {
    if (is_first_rank() || verbose) {
      // In one write, so that the lines of several ranks (--verbose) do not interleave.
      const std::string line = error_line(e, verbose);
      std::fwrite(line.data(), 1, line.size(), stderr);
    }
    return 1;
  }
  return 0;
}
