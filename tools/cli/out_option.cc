#include "tools/cli/out_option.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "opt/collective.h"
#include "opt/errors.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checkpoint_reader.h"
#include "serialization/staging_directory.h"

namespace mto {
namespace cli {

bool holds_training_state(const std::string& dir) {
  if (!std::filesystem::exists(std::filesystem::path(dir) / kManifestFileName)) return false;
  const Manifest manifest = read_checkpoint_manifest(dir);
  for (const auto& record : manifest.extra_files()) {
    if (record.file() == kTrainingStateFile) return true;
  }
  return false;
}

void check_out(Communicator& world, const std::string& out, bool resuming) {
  run_on_every_rank(world, [&] {
    if (world.rank() != 0) return;
    check_replaceable(out);
    // A save there would replace the job's optimizer state and progress without a word.
    if (!resuming && holds_training_state(out)) {
      throw ConfigError(absl::StrCat("--out ", out, " holds the unfinished training of a job (its training state), ",
                                     "which a save there would lose: continue it with mto train --resume, or give ",
                                     "--out another directory"));
    }
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
