// The searcher base: the order of its steps, the search_algorithm of a mode, and resuming
// an interrupted search from its checkpoint.
#include <gtest/gtest.h>

#include <google/protobuf/struct.pb.h>

#include <filesystem>
#include <functional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "opt/conversion.h"
#include "opt/registry.h"
#include "opt/searcher.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace {

using Score = std::function<double(int candidate)>;
constexpr ContextKey<Score> kScore{"score"};
constexpr ContextKey<int> kStopAfter{"stop_after"};

// Scores candidates 0..9 with the "score" kwarg, keeps the best, and checkpoints after each
// candidate so that an interrupted search resumes where it stopped.
class BestCandidateSearcher : public Searcher {
 public:
  std::vector<std::string> steps;
  std::vector<int> evaluated;
  int best = -1;

 protected:
  void reset() override {
    steps.push_back("reset");
    next_ = 0;
    best = -1;
    best_score_ = -1e300;
  }
  void sanitize_search_config(SearchConfig& config) override {
    steps.push_back("sanitize_search_config");
    if (!config.context.contains(kScore)) throw ConfigError("search needs a 'score' function");
  }
  bool load_search_checkpoint() override {
    steps.push_back("load_search_checkpoint");
    return Searcher::load_search_checkpoint();
  }
  std::string state_dict() const override { return absl::StrCat(next_, " ", best, " ", best_score_); }
  void load_state_dict(const std::string& state) override {
    std::vector<std::string> parts = absl::StrSplit(state, ' ');
    ASSERT_EQ(parts.size(), 3u);
    ASSERT_TRUE(absl::SimpleAtoi(parts[0], &next_));
    ASSERT_TRUE(absl::SimpleAtoi(parts[1], &best));
    ASSERT_TRUE(absl::SimpleAtod(parts[2], &best_score_));
  }
  void before_search() override { steps.push_back("before_search"); }
  void run_search() override {
    steps.push_back("run_search");
    const Score& score = config().context.get(kScore);
    while (next_ < 10) {
      const int candidate = next_++;
      evaluated.push_back(candidate);
      const double s = score(candidate);
      if (s > best_score_) {
        best_score_ = s;
        best = candidate;
      }
      save_search_checkpoint();
      if (config().context.contains(kStopAfter) && candidate == config().context.get(kStopAfter)) {
        throw std::runtime_error("interrupted");
      }
    }
  }
  void after_search() override { steps.push_back("after_search"); }

 private:
  int next_ = 0;
  double best_score_ = -1e300;
};

class FakeSearchMode : public ModeDescriptor {
 public:
  std::string name() const override { return "fake_search"; }
  MessagePtr config_class() const override { return std::make_unique<google::protobuf::Struct>(); }
  SearcherFactory search_algorithm() const override {
    return [] { return std::make_unique<BestCandidateSearcher>(); };
  }
  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
    return {model, nullptr};
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override { return model; }
};

MTO_REGISTER_MODE(test_search, FakeSearchMode);

SearchConfig config_with(Score score) {
  SearchConfig config;
  config.context.set(kScore, std::move(score));
  return config;
}

TEST(SearcherTest, ModesWithoutSearchHaveNoAlgorithm) {
  EXPECT_FALSE(ModeRegistry::get_from_any("test_quantize")->search_algorithm());
  EXPECT_TRUE(ModeRegistry::get_from_any("fake_search")->search_algorithm());
}

TEST(SearcherTest, SearchRunsItsStepsInOrder) {
  std::unique_ptr<Searcher> searcher = ModeRegistry::get_from_any("fake_search")->search_algorithm()();
  auto* typed = dynamic_cast<BestCandidateSearcher*>(searcher.get());
  ASSERT_NE(typed, nullptr);
  ModulePtr model = ModelLike("test_mlp").build();
  EXPECT_EQ(searcher->search(model, config_with([](int c) { return -(c - 6) * (c - 6); })), model);
  EXPECT_EQ(typed->steps, (std::vector<std::string>{"reset", "sanitize_search_config", "load_search_checkpoint",
                                                    "before_search", "run_search", "after_search"}));
  EXPECT_EQ(typed->best, 6);
  EXPECT_THROW(searcher->search(model, SearchConfig()), ConfigError);
}

TEST(SearcherTest, InterruptedSearchResumesFromItsCheckpoint) {
  const std::string checkpoint = test::make_temp_dir() + "/search.rank0";
  Score score = [](int c) { return c == 2 ? 10.0 : static_cast<double>(c); };
  SearchConfig first = config_with(score);
  first.checkpoint = checkpoint;
  first.context.set(kStopAfter, 4);
  BestCandidateSearcher interrupted;
  EXPECT_THROW(interrupted.search(ModelLike("test_mlp").build(), first), std::runtime_error);
  EXPECT_TRUE(std::filesystem::exists(checkpoint));
  EXPECT_FALSE(std::filesystem::exists(checkpoint + ".tmp"));

  SearchConfig second = config_with(score);
  second.checkpoint = checkpoint;
  BestCandidateSearcher resumed;
  resumed.search(ModelLike("test_mlp").build(), second);
  // Candidates 0..4 were scored before the interruption; the best so far (2) carried over.
  EXPECT_EQ(resumed.evaluated, (std::vector<int>{5, 6, 7, 8, 9}));
  EXPECT_EQ(resumed.best, 2);
}

}  // namespace
}  // namespace mto
