#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace mto {
namespace quantization {

// One option of one group of a multiple-choice knapsack: what it costs and what it loses.
struct KnapsackOption {
  uint64_t cost = 0;
  double score = 0;
};

// The exact solution of the multiple-choice knapsack: one option per group (groups[g] is
// never empty) with the least total score whose total cost is at most `budget`; among
// equal scores the least cost, then the earliest options. Solved by dynamic programming
// over the groups on the Pareto frontier of (cost, score): exact, deterministic, and small
// when the groups are few (the layers of a model), whatever the costs. std::nullopt when no
// choice fits the budget.
std::optional<std::vector<int>> solve_multiple_choice_knapsack(const std::vector<std::vector<KnapsackOption>>& groups,
                                                               uint64_t budget);

}  // namespace quantization
}  // namespace mto
