#include "modes/nas/search.h"

#include <ATen/ATen.h>

#include <cmath>
#include <iostream>
#include <limits>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "distributed/sharding.h"
#include "distributed/mesh.h"
#include "modes/nas/batch_norm.h"
#include "opt/collective.h"
#include "opt/errors.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checksum.h"

namespace mto {
namespace nas {

Constraint Constraint::parse(const std::string& text) {
  Constraint constraint;
  absl::string_view value = text;
  if (absl::ConsumePrefix(&value, "params=")) {
    constraint.kind = Kind::kParams;
  } else if (absl::ConsumePrefix(&value, "flops=")) {
    constraint.kind = Kind::kFlops;
  } else {
    throw ConfigError(absl::StrCat("constraint '", text, "' must be params=FRACTION or flops=FRACTION"));
  }
  const bool percent = absl::ConsumeSuffix(&value, "%");
  if (!absl::SimpleAtod(value, &constraint.fraction) || !(constraint.fraction > 0)) {
    throw ConfigError(absl::StrCat("constraint '", text, "' needs a positive number, e.g. params=0.5"));
  }
  if (percent) constraint.fraction /= 100;
  if (constraint.fraction > 1) {
    throw ConfigError(absl::StrCat("constraint '", text, "' asks for more than the whole model, which every subnet "
                                   "meets: give a fraction of it up to 1 (or 100%)"));
  }
  return constraint;
}

std::string Constraint::to_string() const {
  return absl::StrCat(kind == Kind::kParams ? "params=" : "flops=", fraction);
}

namespace {

// Where the searcher finds the options search() was given.
constexpr ContextKey<SearchOptions> kSearchOptions{"options"};

}  // namespace

void FastNasSearcher::reset() {
  space_.reset();
  full_cost_ = 0;
  candidates_.clear();
  scores_.clear();
  loaded_.clear();
  result_ = SearchResult();
}

void FastNasSearcher::sanitize_search_config(SearchConfig& config) {
  options_ = config.context.get(kSearchOptions);
  if (!options_.score) throw ConfigError("search: options.score is required");
  if (options_.num_candidates < 1) {
    throw ConfigError(absl::StrCat("search: num_candidates must be positive, got ", options_.num_candidates));
  }
  if (!options_.communicator) options_.communicator = default_mesh()->world();
  config.checkpoint = options_.checkpoint;
  config.verbose = options_.verbose;
}

namespace {

// XXH3-64, in hex, of every parameter's name, dtype, shape and bytes, in order: which model
// a search checkpoint belongs to (fastnas searches unsplit models).
std::string parameters_fingerprint(torch::nn::Module& model) {
  Xxh3Stream hash;
  for (const auto& item : model.named_parameters()) {
    const at::Tensor t = item.value().detach().contiguous();
    const std::string head = absl::StrCat(item.key(), " ", c10::toString(t.scalar_type()), " ",
                                          absl::StrJoin(t.sizes(), "x"), ";");
    hash.update(head.data(), head.size());
    hash.update(t.data_ptr(), t.numel() * t.element_size());
  }
  return absl::StrFormat("%016x", hash.digest());
}

}  // namespace

std::string FastNasSearcher::state_dict() const {
  nlohmann::json scores = nlohmann::json::object();
  for (size_t i = 0; i < scores_.size(); ++i) {
    if (!std::isnan(scores_[i])) scores[std::to_string(i)] = scores_[i];
  }
  nlohmann::json state = identity_;
  state["candidates"] = candidates_;
  state["scores"] = scores;
  return state.dump();
}

bool FastNasSearcher::load_search_checkpoint() {
  bool loaded = false;
  run_on_every_rank(*options_.communicator, [&] { loaded = Searcher::load_search_checkpoint(); });
  return loaded;
}

void FastNasSearcher::load_state_dict(const std::string& state) { loaded_ = state; }

int64_t FastNasSearcher::cost_of(const std::vector<int64_t>& widths) const {
  return options_.constraint.kind == Constraint::Kind::kParams ? space_->count_params(widths)
                                                                : space_->count_macs(widths);
}

double FastNasSearcher::fraction_of(const std::vector<int64_t>& widths) const {
  return static_cast<double>(cost_of(widths)) / full_cost_;
}

void FastNasSearcher::use(const std::vector<int64_t>& widths) {
  space_->set_widths(widths);
  if (options_.calibrate_loop) recalibrate_batch_norms(*model(), options_.calibrate_loop);
}

void FastNasSearcher::before_search() {
  // Before the channels are sorted by importance, which reorders them in place.
  identity_ = {{"model", parameters_fingerprint(*model())}, {"data", options_.data_fingerprint}};
  space_ = std::make_unique<SearchSpace>(*model());
  space_->sort_by_importance();
  full_cost_ = cost_of(space_->max_widths());
  const FastNasMetadata& metadata = space_->metadata();
  std::set<std::vector<int64_t>> seen;
  auto offer = [&](const std::vector<int64_t>& widths) {
    if (static_cast<int64_t>(candidates_.size()) < options_.num_candidates && !seen.count(widths) &&
        fraction_of(widths) <= options_.constraint.fraction) {
      seen.insert(widths);
      candidates_.push_back(widths);
    }
  };
  // The same ratio for every group, largest first, then random subnets.
  for (int step = 16; step >= 1; --step) {
    std::vector<int64_t> widths;
    for (const WidthGroup& group : metadata.groups()) {
      auto it = std::lower_bound(group.choices().begin(), group.choices().end(),
                                 static_cast<int64_t>(std::ceil(group.max_width() * step / 16.0)));
      widths.push_back(*it);
    }
    offer(widths);
  }
  std::mt19937_64 random(options_.seed);
  for (int64_t attempt = 0;
       attempt < 200 * options_.num_candidates && static_cast<int64_t>(candidates_.size()) < options_.num_candidates;
       ++attempt) {
    std::vector<int64_t> widths;
    for (const WidthGroup& group : metadata.groups()) {
      widths.push_back(group.choices(static_cast<int>(random() % group.choices_size())));
    }
    offer(widths);
  }
  if (candidates_.empty()) {
    std::vector<int64_t> smallest;
    for (const WidthGroup& group : metadata.groups()) smallest.push_back(group.choices(0));
    throw ConfigError(absl::StrFormat("search: no subnet meets %s: the smallest has %.3f of the full model",
                                      options_.constraint.to_string(), fraction_of(smallest)));
  }
  scores_.assign(candidates_.size(), std::nan(""));
  // Each rank checks its own file: all fail together if one is bad.
  run_on_every_rank(*options_.communicator, [&] { resume_scores(); });
}

void FastNasSearcher::resume_scores() {
  if (loaded_.empty()) return;
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(loaded_);
    if (state.value("model", nlohmann::json()) != identity_.at("model") ||
        state.value("data", nlohmann::json()) != identity_.at("data")) {
      throw CheckpointError(absl::StrCat("search checkpoint ", config().checkpoint,
                                         " was written for another model or other data (its scores are not this "
                                         "search's); delete it to start over"));
    }
    if (state.at("candidates").get<std::vector<std::vector<int64_t>>>() != candidates_) {
      throw CheckpointError(absl::StrCat("search checkpoint ", config().checkpoint,
                                         " was written for other candidates (another model, constraint, "
                                         "seed or count); delete it to start over"));
    }
    for (const auto& [index, score] : state.at("scores").items()) {
      size_t i = 0;
      if (!absl::SimpleAtoi(index, &i) || i >= scores_.size() || !score.is_number()) {
        throw CheckpointError(absl::StrCat("search checkpoint ", config().checkpoint, " has a bad score entry '",
                                           index, "'"));
      }
      scores_[i] = score.get<double>();
      ++result_.resumed;
    }
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(absl::StrCat("search checkpoint ", config().checkpoint, " is damaged: ", e.what()));
  }
}

void FastNasSearcher::run_search() {
  Communicator& comm = *options_.communicator;
  const Range mine = split_range(static_cast<int64_t>(candidates_.size()), comm.rank(), comm.world_size());
  const bool print = options_.verbose && comm.rank() == 0;
  run_on_every_rank(comm, [&] {
    for (int64_t i = mine.begin; i < mine.end; ++i) {
      if (!std::isnan(scores_[i])) continue;
      use(candidates_[i]);
      const double score = options_.score(*model());
      // NaN marks "not scored": a subnet that scores NaN ranks last instead.
      scores_[i] = std::isnan(score) ? std::numeric_limits<double>::lowest() : score;
      ++result_.scored_here;
      save_search_checkpoint();
      if (print) {
        std::cout << absl::StrFormat("  candidate %d/%d (rank 0 scores %d-%d): widths %s, %s %.3f, score %.4f\n",
                                     i + 1, candidates_.size(), mine.begin + 1, mine.end,
                                     absl::StrJoin(candidates_[i], "/"),
                                     options_.constraint.kind == Constraint::Kind::kParams ? "params" : "flops",
                                     fraction_of(candidates_[i]), scores_[i])
                  << std::flush;
      }
    }
  });
  // One collective: every rank fills in what it knows, -inf elsewhere, and the maximum
  // is every candidate's score.
  at::Tensor gathered = at::full({static_cast<int64_t>(scores_.size())},
                                 -std::numeric_limits<double>::infinity(), at::kDouble);
  double* all = gathered.data_ptr<double>();
  for (size_t i = 0; i < scores_.size(); ++i) {
    if (!std::isnan(scores_[i])) all[i] = scores_[i];
  }
  comm.all_reduce(gathered, ReduceOp::kMax);
  for (size_t i = 0; i < scores_.size(); ++i) scores_[i] = all[i];
}

void FastNasSearcher::after_search() {
  size_t best = 0;
  for (size_t i = 1; i < scores_.size(); ++i) {
    if (scores_[i] > scores_[best]) best = i;
  }
  use(candidates_[best]);
  result_.subnet = space_->subnet_config();
  result_.score = scores_[best];
  result_.fraction = fraction_of(candidates_[best]);
  result_.params = space_->count_params(candidates_[best]);
  result_.full_params = space_->count_params(space_->max_widths());
  result_.candidates = static_cast<int64_t>(candidates_.size());
}

SearchResult search(const std::shared_ptr<torch::nn::Module>& model, const SearchOptions& options) {
  FastNasSearcher searcher;
  SearchConfig config;
  config.context.set(kSearchOptions, options);
  searcher.search(model, config);
  return searcher.result();
}

}  // namespace nas
}  // namespace mto
