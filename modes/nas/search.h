#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <torch/nn/module.h>

#include "distributed/communicator.h"
#include "modes/nas/nas.pb.h"
#include "modes/nas/search_space.h"
#include "opt/searcher.h"

namespace mto {
namespace nas {

// A limit on subnets: their parameters, or the multiply-accumulates of their mto::nn
// layers, as a fraction of the full model's.
struct Constraint {
  enum class Kind { kParams, kFlops };
  Kind kind = Kind::kParams;
  double fraction = 1.0;

  // Parses "params=0.5", "flops=0.6" or "params=50%"; throws ConfigError naming the text.
  static Constraint parse(const std::string& text);
  // "params=0.5"
  std::string to_string() const;
};

// Scores a subnet: higher is better (e.g. the accuracy on validation data). Must give the
// same value for the same subnet on every rank (score every rank on the same data).
using ScoreFunction = std::function<double(torch::nn::Module& model)>;

// Runs batches through the model, e.g. to measure batch-norm statistics.
using ForwardLoop = std::function<void(torch::nn::Module& model)>;

// Options of a pruning search.
struct SearchOptions {
  Constraint constraint;
  // How many distinct subnets within the constraint to score (fewer if the space is
  // smaller): one per width ratio applied to every layer alike, then random ones.
  int64_t num_candidates = 32;
  // Seed of the random candidates; the same seed gives the same candidates on any number
  // of ranks.
  uint64_t seed = 0;
  // Required.
  ScoreFunction score;
  // Optional: batches for re-measuring batch-norm statistics before each score (on every
  // rank the same data, like `score`).
  ForwardLoop calibrate_loop;
  // The ranks that share the candidates; null means the default mesh's world.
  std::shared_ptr<Communicator> communicator;
  // This rank's search checkpoint (a file); empty for none. An interrupted search resumes
  // from it and scores only what it had not scored. A checkpoint written for another model
  // (other parameters) or other data (another data_fingerprint) is refused.
  std::string checkpoint;
  // Names the data `score` and `calibrate_loop` run on, e.g. "fashion-mnist: the last 2000
  // training images", so that a search checkpoint of other data is refused.
  std::string data_fingerprint;
  // Print a line per scored candidate (rank 0).
  bool verbose = false;
};

// What a search found.
struct SearchResult {
  std::vector<LayerWidth> subnet;
  double score = 0;
  // The best subnet's parameters or multiply-accumulates over the full model's.
  double fraction = 0;
  int64_t params = 0;
  int64_t full_params = 0;
  // Candidates scored by all ranks together, by this rank, and taken from its checkpoint.
  int64_t candidates = 0;
  int64_t scored_here = 0;
  int64_t resumed = 0;
};

// The search algorithm of "fastnas": sorts every width group's channels by importance,
// draws candidate subnets within the constraint, splits them over the ranks (each scores
// a contiguous share), gathers the scores in one collective and makes the best subnet
// active on every rank (ties go to the earlier candidate). Reads a SearchOptions from the
// kwarg "options".
class FastNasSearcher : public Searcher {
 public:
  const SearchResult& result() const { return result_; }

 protected:
  void reset() override;
  void sanitize_search_config(SearchConfig& config) override;
  // Each rank reads its own checkpoint file; one that cannot be read fails the search on
  // every rank, where the others would wait for that rank in the search's first collective.
  bool load_search_checkpoint() override;
  std::string state_dict() const override;
  void load_state_dict(const std::string& state) override;
  void before_search() override;
  void run_search() override;
  void after_search() override;

 private:
  // Parameters or multiply-accumulates of the subnet, as the constraint counts them, and
  // that over the full model's (full_cost_, counted once before the search).
  int64_t cost_of(const std::vector<int64_t>& widths) const;
  double fraction_of(const std::vector<int64_t>& widths) const;
  void use(const std::vector<int64_t>& widths);
  // Takes the scores of the loaded checkpoint, if any, after checking it was written for
  // these candidates. Throws CheckpointError naming the file otherwise.
  void resume_scores();

  SearchOptions options_;
  std::unique_ptr<SearchSpace> space_;
  int64_t full_cost_ = 0;
  std::vector<std::vector<int64_t>> candidates_;
  std::vector<double> scores_;  // NaN where not scored
  std::string loaded_;
  // The model's parameters and options_.data_fingerprint, as a search checkpoint records them.
  nlohmann::json identity_;
  SearchResult result_;
};

// Searches the subnet of `model` (converted by "fastnas") that scores best within
// `options.constraint` and makes it active; export_nas then makes it physical. Collective
// over options.communicator: every rank ends with the same subnet. Throws ConfigError for
// bad options or a constraint no subnet meets, ApplyModeError if the model has no search
// space; if the score throws on any rank, every rank throws.
SearchResult search(const std::shared_ptr<torch::nn::Module>& model, const SearchOptions& options);

}  // namespace nas
}  // namespace mto
