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

bool is_within(const std::string& inner, const std::string& outer) {
  namespace fs = std::filesystem;
  auto resolved = [](const std::string& path) {
    std::error_code ec;
    fs::path p = fs::weakly_canonical(fs::absolute(path), ec);
    if (ec) p = fs::absolute(path).lexically_normal();
    return p.has_filename() ? p : p.parent_path();
  };
  const fs::path relative = resolved(inner).lexically_relative(resolved(outer));
  return !relative.empty() && *relative.begin() != "..";
}

}  // namespace cli
}  // namespace mto
