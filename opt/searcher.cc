#include "opt/searcher.h"

#include <filesystem>

#include "serialization/checkpoint_layout.h"
#include "serialization/checksummed_file.h"

namespace mto {
namespace {

constexpr char kSearchCheckpointKind[] = "search checkpoint";

}  // namespace

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
  load_state_dict(read_checksummed_file(config_.checkpoint, kSearchCheckpointKind, kMaxMetadataBytes));
  return true;
}

void Searcher::save_search_checkpoint() const {
  if (config_.checkpoint.empty()) return;
  write_checksummed_file(config_.checkpoint, kSearchCheckpointKind, state_dict());
}

}  // namespace mto
