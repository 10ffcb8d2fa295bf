#include "tools/cli/out_option.h"

#include <filesystem>
#include <system_error>

#include "opt/collective.h"
#include "serialization/staging_directory.h"

namespace mto {
namespace cli {

void check_out(Communicator& world, const std::string& out) {
  run_on_every_rank(world, [&] {
    if (world.rank() == 0) check_replaceable(out);
  });
}

bool same_directory(const std::string& a, const std::string& b) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::equivalent(a, b, ec)) return true;
  auto normal = [](const std::string& path) {
    fs::path p = fs::absolute(path).lexically_normal();
    return p.has_filename() ? p : p.parent_path();
  };
  return normal(a) == normal(b);
}

}  // namespace cli
}  // namespace mto
