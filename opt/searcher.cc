#include "opt/searcher.h"

#include <cerrno>
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/file.h"

namespace mto {

std::shared_ptr<torch::nn::Module> Searcher::search(std::shared_ptr<torch::nn::Module> model,
                                                    SearchConfig config) {
  model_ = std::move(model);
  config_ = std::move(config);
  reset();
  sanitize_search_config(config_);
  load_search_checkpoint();
  before_search();
  run_search();
  after_search();
  return model_;
}

bool Searcher::load_search_checkpoint() {
  if (config_.checkpoint.empty() || !std::filesystem::exists(config_.checkpoint)) return false;
  load_state_dict(read_file(config_.checkpoint, kMaxMetadataBytes));
  return true;
}

void Searcher::save_search_checkpoint() const {
  if (config_.checkpoint.empty()) return;
  const std::string temporary = config_.checkpoint + ".tmp";
  write_file_synced(temporary, state_dict());
  if (std::rename(temporary.c_str(), config_.checkpoint.c_str()) != 0) {
    throw CheckpointError(io_error_message(absl::StrCat("cannot rename ", temporary, " to"),
                                           config_.checkpoint, errno));
  }
  std::filesystem::path parent = std::filesystem::absolute(config_.checkpoint).parent_path();
  sync_directory(parent.string());
}

}  // namespace mto
