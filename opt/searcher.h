#pragma once

#include <memory>
#include <string>

#include <torch/nn/module.h>

#include "opt/runtime_context.h"

namespace mto {

// Options of one search run.
struct SearchConfig {
  // File that keeps the searcher's state so that an interrupted search resumes; empty for
  // none. Each rank passes its own file.
  std::string checkpoint;
  // Whether to print progress.
  bool verbose = false;
  // Data loaders, score functions and other C++ values; never saved.
  RuntimeContext context;
};

// Base of search algorithms, the search_algorithm of a mode. search() runs the steps below
// in order; a subclass implements run_search and overrides the others as needed. Not safe
// to share between threads.
class Searcher {
 public:
  virtual ~Searcher() = default;

  // Runs reset, sanitize_search_config, load_search_checkpoint, before_search, run_search
  // and after_search on `model`, and returns the model (modified to the best candidate).
  std::shared_ptr<torch::nn::Module> search(std::shared_ptr<torch::nn::Module> model,
                                            SearchConfig config);

 protected:
  // Clears what an earlier search left.
  virtual void reset() {}
  // Checks and completes the config; throws ConfigError for a bad one.
  virtual void sanitize_search_config(SearchConfig& /*config*/) {}
  // Restores state_dict() from config().checkpoint if that file exists; returns whether it
  // did. Throws CheckpointError if the file cannot be read.
  virtual bool load_search_checkpoint();
  // Writes state_dict() to config().checkpoint (when set), atomically, durably and
  // checksummed (serialization/checksummed_file.h).
  void save_search_checkpoint() const;
  // The searcher's resumable state, and how to load it back.
  virtual std::string state_dict() const { return ""; }
  virtual void load_state_dict(const std::string& /*state*/) {}
  virtual void before_search() {}
  virtual void run_search() = 0;
  virtual void after_search() {}

  const std::shared_ptr<torch::nn::Module>& model() const { return model_; }
  const SearchConfig& config() const { return config_; }

 private:
  std::shared_ptr<torch::nn::Module> model_;
  SearchConfig config_;
};

}  // namespace mto
