#include "modes/quantization/multiple_choice_knapsack.h"

#include <algorithm>
#include <tuple>

namespace mto {
namespace quantization {
namespace {

// A partial choice over the first groups: its totals and its options.
struct State {
  uint64_t cost = 0;
  double score = 0;
  std::vector<int> choice;
};

}  // namespace

std::optional<std::vector<int>> solve_multiple_choice_knapsack(const std::vector<std::vector<KnapsackOption>>& groups,
                                                               uint64_t budget) {
  std::vector<State> frontier{State{}};
  for (const std::vector<KnapsackOption>& group : groups) {
    std::vector<State> next;
    for (const State& previous : frontier) {
      for (int o = 0; o < static_cast<int>(group.size()); ++o) {
        const uint64_t cost = previous.cost + group[o].cost;
        if (cost > budget || cost < previous.cost) continue;
        State s{cost, previous.score + group[o].score, previous.choice};
        s.choice.push_back(o);
        next.push_back(std::move(s));
      }
    }
    // Keep the Pareto frontier: by cost, each state must lose strictly less than every
    // cheaper one. Among equal totals the lexicographically first options win, so every
    // rank picks the same and the choice is the earliest of the equal optima (a state that
    // another one dominates can never complete to a better choice than it does).
    std::sort(next.begin(), next.end(), [](const State& a, const State& b) {
      return std::tie(a.cost, a.score, a.choice) < std::tie(b.cost, b.score, b.choice);
    });
    frontier.clear();
    for (State& s : next) {
      if (frontier.empty() || s.score < frontier.back().score) frontier.push_back(std::move(s));
    }
    if (frontier.empty()) return std::nullopt;
  }
  // The last state of the frontier has the least score (the cheapest among equals).
  return frontier.back().choice;
}

}  // namespace quantization
}  // namespace mto
