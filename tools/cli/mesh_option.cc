#include "tools/cli/mesh_option.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "distributed/distributed_error.h"
#include "distributed/mesh.h"
#include "distributed/world.h"
#include "opt/errors.h"
#include "tools/cli/validators.h"

namespace mto {
namespace cli {

void add_tp_option(CLI::App* command, int* tp) {
  command->add_option("--tp", *tp,
                      "Tensor-parallel size: the ranks form a (world / tp) x tp data x tensor parallel mesh, and "
                      "language models split their heads, MLP and vocabulary over each tp group")
      ->capture_default_str()
      ->check(positive());
}

void check_model_splits(const Mesh& mesh, bool splits, const std::string& model) {
  if (splits || mesh.tp_size() == 1) return;
  throw ConfigError(absl::StrFormat(
      "--tp %d: %s does not split over tensor-parallel ranks (only the gpt does), so the mesh %s would have each "
      "group of %d ranks do the same work; use --tp 1",
      mesh.tp_size(), model, mesh.describe(), mesh.tp_size()));
}

namespace {

// This process's arguments after the program's name, as /proc/self/cmdline holds them
// (separated by NULs); empty where it cannot be read.
std::string own_arguments() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t program_end = all.find('\0');
  return program_end == std::string::npos ? "" : all.substr(program_end + 1);
}

// `arguments` as a command line reads: NULs become spaces.
std::string readable(std::string arguments) {
  std::replace(arguments.begin(), arguments.end(), '\0', ' ');
  return std::string(absl::StripAsciiWhitespace(arguments));
}

// Throws ConfigError on every rank unless every rank of `world` runs with rank 0's
// arguments: ranks given other options (a per-rank wrapper, an edited script) take other
// steps, and their collectives stop matching, or they save what the others never computed.
void check_same_command(Communicator& world) {
  const std::vector<std::string> arguments = world.all_gather(own_arguments());
  for (size_t rank = 1; rank < arguments.size(); ++rank) {
    if (arguments[rank] == arguments[0]) continue;
    throw ConfigError(absl::StrFormat(
        "rank %d runs 'mto %s' but rank 0 runs 'mto %s': mpirun must start every rank with the same command",
        rank, readable(arguments[rank]), readable(arguments[0])));
  }
}

}  // namespace

std::shared_ptr<Mesh> join_mesh(int tp) {
  const std::shared_ptr<Communicator> ranks = world();
  check_same_command(*ranks);
  try {
    check_tensor_parallel_size(tp, ranks->world_size());
  } catch (const DistributedError& e) {
    throw ConfigError(absl::StrFormat("--tp %d: %s", tp, e.what()));
  }
  std::shared_ptr<Mesh> mesh = Mesh::create(ranks, tp);
  set_default_mesh(mesh);
  return mesh;
}

}  // namespace cli
}  // namespace mto
