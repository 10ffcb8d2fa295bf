// run_on_every_rank on 2 real mpirun ranks: an error on one rank reaches the other with its
// type and one line of message, "(on rank R)" appended; LibTorch's errors without the C++
// stack trace their what() carries.
#include <gtest/gtest.h>

#include <c10/util/Exception.h>

#include <functional>
#include <stdexcept>
#include <string>

#include "distributed/world.h"
#include "opt/collective.h"
#include "opt/errors.h"

namespace mto {
namespace {

// The message of the exception `step` throws on this rank, with its kind: "torch: ...",
// "config: ..." or "other: ...".
std::string outcome_of(const std::function<void()>& step) {
  try {
    run_on_every_rank(*world(), step);
  } catch (const c10::Error& e) {
    return std::string("torch: ") + e.what_without_backtrace();
  } catch (const ConfigError& e) {
    return std::string("config: ") + e.what();
  } catch (const std::exception& e) {
    return std::string("other: ") + e.what();
  }
  return "none";
}

TEST(RunOnEveryRankMpiTest, ALibTorchErrorReachesTheOtherRanksWithoutItsStackTrace) {
  ASSERT_EQ(world()->world_size(), 2) << "run with 2 ranks";
  const int rank = world()->rank();
  const std::string outcome = outcome_of([rank] { TORCH_CHECK(rank != 1, "bad shape [3, 4]"); });
  if (rank == 1) {
    EXPECT_EQ(outcome, "torch: bad shape [3, 4]");
  } else {
    EXPECT_EQ(outcome, "other: bad shape [3, 4] (on rank 1)");
  }
}

TEST(RunOnEveryRankMpiTest, AnMtoErrorKeepsItsType) {
  const int rank = world()->rank();
  const std::string outcome = outcome_of([rank] {
    if (rank == 0) throw ConfigError("unknown key 'x'");
  });
  EXPECT_EQ(outcome, rank == 0 ? "config: unknown key 'x'" : "config: unknown key 'x' (on rank 0)");
}

TEST(RunOnEveryRankMpiTest, NoErrorOnAnyRank) { EXPECT_EQ(outcome_of([] {}), "none"); }

}  // namespace
}  // namespace mto
