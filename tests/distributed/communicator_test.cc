// The Communicator on whatever world the test is launched in: a world of one without
// mpirun, real MPI ranks under it (see run_mpi.sh).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <numeric>

#include "distributed/distributed_error.h"
#include "distributed/world.h"

namespace mto {
namespace {

class CommunicatorTest : public ::testing::Test {
 protected:
  std::shared_ptr<Communicator> comm = world();
  int rank = comm->rank();
  int n = comm->world_size();
};

TEST_F(CommunicatorTest, WorldMatchesTheLaunch) {
  if (launched_by_mpirun()) {
    EXPECT_EQ(n, std::atoi(std::getenv("OMPI_COMM_WORLD_SIZE")));
    EXPECT_EQ(rank, std::atoi(std::getenv("OMPI_COMM_WORLD_RANK")));
    EXPECT_EQ(comm->backend_name(), "mpi");  // no GPU here
  } else {
    EXPECT_EQ(n, 1);
    EXPECT_EQ(comm->backend_name(), "local");
  }
}

TEST_F(CommunicatorTest, AllReduceSumMaxMin) {
  // Rank r holds [r, r + 1, r + 2] in several dtypes.
  for (auto type : {at::kFloat, at::kDouble, at::kLong, at::kInt, at::kHalf, at::kBFloat16, at::kByte}) {
    at::Tensor base = at::arange(3, at::kDouble) + rank;
    at::Tensor sum = base.to(type).clone(), max = base.to(type).clone(), min = base.to(type).clone();
    comm->all_reduce(sum, ReduceOp::kSum);
    comm->all_reduce(max, ReduceOp::kMax);
    comm->all_reduce(min, ReduceOp::kMin);
    const double ranks_sum = n * (n - 1) / 2.0;
    EXPECT_TRUE(sum.to(at::kDouble).equal(at::arange(3, at::kDouble) * n + ranks_sum)) << type;
    EXPECT_TRUE(max.to(at::kDouble).equal(at::arange(3, at::kDouble) + (n - 1))) << type;
    EXPECT_TRUE(min.to(at::kDouble).equal(at::arange(3, at::kDouble))) << type;
  }
  at::Tensor flags = at::zeros({4}, at::kBool);
  flags[rank % 4] = true;
  comm->all_reduce(flags, ReduceOp::kMax);
  EXPECT_EQ(flags.sum().item<int64_t>(), std::min(n, 4));
}

TEST_F(CommunicatorTest, AllReduceOfANonContiguousTensorWritesBack) {
  at::Tensor t = at::ones({3, 2}).t();
  ASSERT_FALSE(t.is_contiguous());
  comm->all_reduce(t, ReduceOp::kSum);
  EXPECT_TRUE(t.equal(at::full({2, 3}, static_cast<double>(n))));
}

TEST_F(CommunicatorTest, BroadcastTensorsAndBytes) {
  for (int root = 0; root < n; ++root) {
    at::Tensor t = at::full({5, 3}, static_cast<double>(rank), at::kFloat);
    comm->broadcast(t, root);
    EXPECT_TRUE(t.equal(at::full({5, 3}, static_cast<double>(root), at::kFloat)));
    std::string bytes = rank == root ? std::string(1000 + root, static_cast<char>('a' + root)) : "x";
    comm->broadcast(bytes, root);
    EXPECT_EQ(bytes, std::string(1000 + root, static_cast<char>('a' + root)));
  }
  std::string empty = rank == 0 ? "" : "not empty";
  comm->broadcast(empty, 0);
  EXPECT_EQ(empty, "");
}

TEST_F(CommunicatorTest, AllGatherTensorsAndBytesOfDifferentSizes) {
  std::vector<at::Tensor> gathered = comm->all_gather(at::full({2, 2}, static_cast<int64_t>(rank), at::kLong));
  ASSERT_EQ(gathered.size(), static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) EXPECT_TRUE(gathered[r].equal(at::full({2, 2}, static_cast<int64_t>(r), at::kLong)));
  std::vector<std::string> strings = comm->all_gather(std::string(rank * 3, static_cast<char>('0' + rank)));
  ASSERT_EQ(strings.size(), static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) EXPECT_EQ(strings[r], std::string(r * 3, static_cast<char>('0' + r)));
}

// Rank r sends rank q the bytes r * 16 + q, repeated r + q + 1 times; rank 1 sends nothing to
// anyone and gets nothing back, and a rank with nothing to move still takes part.
TEST_F(CommunicatorTest, AllToAllMovesEachPairsBytes) {
  auto length = [](int from, int to) -> size_t { return from == 1 || to == 1 ? 0 : from + to + 1; };
  std::vector<std::string> out(n);
  std::vector<std::string> in(n);
  std::vector<SendBuffer> send(n);
  std::vector<ReceiveBuffer> receive(n);
  for (int q = 0; q < n; ++q) {
    out[q].assign(length(rank, q), static_cast<char>(rank * 16 + q));
    in[q].assign(length(q, rank), '?');
    send[q] = {out[q].data(), out[q].size()};
    receive[q] = {in[q].data(), in[q].size()};
  }
  comm->reset_stats();
  comm->all_to_all(send, receive);
  for (int q = 0; q < n; ++q) EXPECT_EQ(in[q], std::string(length(q, rank), static_cast<char>(q * 16 + rank))) << q;
  EXPECT_EQ(comm->stats().collectives, 1u);
  size_t sent = 0;
  for (int q = 0; q < n; ++q) sent += length(rank, q);
  EXPECT_EQ(comm->stats().bytes, sent);
  comm->barrier();
}

TEST_F(CommunicatorTest, AllToAllRefusesBuffersNotOnePerRank) {
  std::string self(4, 'x');
  std::vector<SendBuffer> send(n + 1);
  std::vector<ReceiveBuffer> receive(n + 1);
  EXPECT_THROW(comm->all_to_all(send, receive), DistributedError);
  std::vector<SendBuffer> one(n);
  std::vector<ReceiveBuffer> other(n);
  one[rank] = {self.data(), 4};
  other[rank] = {self.data(), 3};
  try {
    comm->all_to_all(one, other);
    ADD_FAILURE() << "a rank that sends itself 4 bytes and expects 3 went on";
  } catch (const DistributedError& e) {
    EXPECT_NE(std::string(e.what()).find("sends itself 4 bytes but expects 3"), std::string::npos) << e.what();
  }
}

TEST_F(CommunicatorTest, BytesReduceElementwise) {
  std::string flags(3, '\0');
  flags[rank % 3] = 1;
  comm->all_reduce(flags, ReduceOp::kMax);
  int set = 0;
  for (char c : flags) set += c;
  EXPECT_EQ(set, std::min(n, 3));
}

TEST_F(CommunicatorTest, StatsCountEveryCollective) {
  comm->reset_stats();
  at::Tensor t = at::ones({10});
  comm->all_reduce(t, ReduceOp::kSum);
  comm->barrier();
  EXPECT_EQ(comm->stats().collectives, 2u);
  EXPECT_EQ(comm->stats().bytes, 40u);
}

TEST_F(CommunicatorTest, SplitMakesSubWorlds) {
  // Even and odd ranks; rank 0 also sits out of a second split.
  std::shared_ptr<Communicator> parity = comm->split(rank % 2, rank);
  ASSERT_NE(parity, nullptr);
  EXPECT_EQ(parity->world_size(), (n - rank % 2 + 1) / 2);
  EXPECT_EQ(parity->rank(), rank / 2);
  at::Tensor t = at::full({1}, static_cast<double>(rank));
  parity->all_reduce(t, ReduceOp::kMax);
  const int largest = (n - 1) % 2 == rank % 2 ? n - 1 : n - 2;
  EXPECT_EQ(t.item<double>(), largest);
  std::shared_ptr<Communicator> without_zero = comm->split(rank == 0 ? -1 : 0, rank);
  EXPECT_EQ(without_zero == nullptr, rank == 0);
  if (without_zero) {
    EXPECT_EQ(without_zero->world_size(), n - 1);
  }
  comm->barrier();
}

TEST_F(CommunicatorTest, UnsupportedInputsAreRejected) {
  EXPECT_THROW(comm->all_reduce(at::Tensor(), ReduceOp::kSum), DistributedError);
  EXPECT_THROW(comm->all_reduce(at::zeros({2}, at::kComplexFloat), ReduceOp::kSum), DistributedError);
}

TEST(WorldOptionsTest, ParsedFromTheEnvironment) {
  EXPECT_EQ(parse_backend_kind("nccl"), BackendKind::kNccl);
  EXPECT_THROW(parse_backend_kind("gloo"), DistributedError);
  setenv("MTO_COLLECTIVE_TIMEOUT", "2.5", 1);
  EXPECT_EQ(world_options_from_env().timeout, std::chrono::milliseconds(2500));
  for (const char* bad : {"soon", "nan", "inf", "0", "-1", "1e300"}) {
    setenv("MTO_COLLECTIVE_TIMEOUT", bad, 1);
    EXPECT_THROW(world_options_from_env(), DistributedError) << bad;
  }
  unsetenv("MTO_COLLECTIVE_TIMEOUT");
}

}  // namespace
}  // namespace mto
