// The transport backends on raw host buffers, with no LibTorch: the same suite runs on the
// world of one, on MPI ranks under mpirun, and on NCCL (MTO_BACKEND=nccl, one GPU; checked
// on a GPU machine, never in CI, where there is none).
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "distributed/distributed_error.h"
#include "distributed/gpu.h"
#include "distributed/local_backend.h"
#include "distributed/mpi_backend.h"
#include "distributed/nccl_backend.h"

namespace mto {
namespace {

constexpr std::chrono::milliseconds kTimeout{60000};

bool nccl_requested() {
  const char* backend = std::getenv("MTO_BACKEND");
  return backend != nullptr && std::string(backend) == "nccl";
}

// The backend this process runs: NCCL (world of one) when asked for, MPI under mpirun,
// the world of one otherwise.
Backend& backend() {
  static Backend* instance = [] {
    std::unique_ptr<Backend> b;
    if (nccl_requested()) {
      b = NcclBackend::create(NcclBackend::new_unique_id(), 0, 1, 0, kTimeout);
    } else if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      std::atexit([] { MPI_Finalize(); });
      b = MpiBackend::world();
    } else {
      b = std::make_unique<LocalBackend>();
    }
    return b.release();
  }();
  return *instance;
}

class BackendTest : public ::testing::Test {
 protected:
  Backend& b = backend();
  int rank = b.rank();
  int n = b.world_size();
};

TEST_F(BackendTest, IsTheOneAskedFor) {
  const std::string expected = nccl_requested() ? "nccl"
                               : std::getenv("OMPI_COMM_WORLD_SIZE") ? "mpi" : "local";
  EXPECT_EQ(b.name(), expected);
  std::cout << "backend " << b.name() << ", rank " << rank << " of " << n << ", " << visible_gpu_count()
            << " GPU(s) visible\n";
}

template <typename T>
void check_all_reduce(Backend& b, DataType type, int rank, int n) {
  std::vector<T> sum(5), max(5), min(5);
  for (int i = 0; i < 5; ++i) sum[i] = max[i] = min[i] = static_cast<T>(i + rank);
  b.all_reduce(sum.data(), 5, type, ReduceOp::kSum, kTimeout);
  b.all_reduce(max.data(), 5, type, ReduceOp::kMax, kTimeout);
  b.all_reduce(min.data(), 5, type, ReduceOp::kMin, kTimeout);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(sum[i], static_cast<T>(i * n + n * (n - 1) / 2));
    EXPECT_EQ(max[i], static_cast<T>(i + n - 1));
    EXPECT_EQ(min[i], static_cast<T>(i));
  }
}

TEST_F(BackendTest, AllReduceEveryTypeAndOp) {
  check_all_reduce<uint8_t>(b, DataType::kUInt8, rank, n);
  check_all_reduce<int32_t>(b, DataType::kInt32, rank, n);
  check_all_reduce<int64_t>(b, DataType::kInt64, rank, n);
  check_all_reduce<float>(b, DataType::kFloat32, rank, n);
  check_all_reduce<double>(b, DataType::kFloat64, rank, n);
}

TEST_F(BackendTest, LargeBuffersTravelInChunks) {
  // More than the NCCL staging chunk (64 MiB).
  const size_t count = (size_t{80} << 20) / sizeof(float);
  std::vector<float> data(count, 1.0f);
  data[count - 1] = static_cast<float>(rank);
  const auto start = std::chrono::steady_clock::now();
  b.all_reduce(data.data(), count, DataType::kFloat32, ReduceOp::kSum, kTimeout);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << b.name() << " all_reduce of 80 MiB of host memory: " << seconds * 1e3 << " ms\n";
  EXPECT_EQ(data[0], static_cast<float>(n));
  EXPECT_EQ(data[count / 2], static_cast<float>(n));
  EXPECT_EQ(data[count - 1], static_cast<float>(n * (n - 1) / 2));

  std::vector<char> bytes(size_t{70} << 20, static_cast<char>(rank));
  if (rank == 0) bytes.back() = 42;
  b.broadcast(bytes.data(), bytes.size(), 0, kTimeout);
  EXPECT_EQ(bytes.front(), 0);
  EXPECT_EQ(bytes.back(), 42);
}

TEST_F(BackendTest, BroadcastFromEveryRoot) {
  for (int root = 0; root < n; ++root) {
    std::vector<int64_t> data(1000, rank);
    b.broadcast(data.data(), data.size() * sizeof(int64_t), root, kTimeout);
    for (int64_t v : data) ASSERT_EQ(v, root);
  }
}

TEST_F(BackendTest, AllGatherInRankOrder) {
  std::vector<char> in(1001, static_cast<char>('a' + rank));
  std::vector<char> out(in.size() * n);
  b.all_gather(in.data(), out.data(), in.size(), kTimeout);
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(out[r * in.size()], 'a' + r);
    EXPECT_EQ(out[r * in.size() + in.size() - 1], 'a' + r);
  }
}

TEST_F(BackendTest, BarrierAndSplit) {
  b.barrier(kTimeout);
  std::unique_ptr<Backend> half = b.split(rank % 2, rank, kTimeout);
  ASSERT_NE(half, nullptr);
  EXPECT_EQ(half->rank(), rank / 2);
  int32_t one = 1;
  half->all_reduce(&one, 1, DataType::kInt32, ReduceOp::kSum, kTimeout);
  EXPECT_EQ(one, half->world_size());
  half->barrier(kTimeout);
  std::unique_ptr<Backend> none = b.split(-1, rank, kTimeout);
  EXPECT_EQ(none, nullptr);
  b.barrier(kTimeout);
}

// The splits Mesh makes for every (dp, tp) the world allows: the tp axis groups the ranks of
// one dp index, the dp axis the ranks of one tp index (rank = dp_index * tp + tp_index).
TEST_F(BackendTest, MeshAxesSplitAsMeshDoes) {
  for (int tp = 1; tp <= n; ++tp) {
    if (n % tp != 0) continue;
    const int dp_index = rank / tp;
    const int tp_index = rank % tp;
    std::unique_ptr<Backend> tp_axis = b.split(dp_index, tp_index, kTimeout);
    std::unique_ptr<Backend> dp_axis = b.split(tp_index, dp_index, kTimeout);
    ASSERT_NE(tp_axis, nullptr);
    ASSERT_NE(dp_axis, nullptr);
    EXPECT_EQ(tp_axis->world_size(), tp);
    EXPECT_EQ(tp_axis->rank(), tp_index);
    EXPECT_EQ(dp_axis->world_size(), n / tp);
    EXPECT_EQ(dp_axis->rank(), dp_index);
    // Each axis sums the world ranks of its own group, and only those.
    int64_t tp_sum = rank;
    tp_axis->all_reduce(&tp_sum, 1, DataType::kInt64, ReduceOp::kSum, kTimeout);
    EXPECT_EQ(tp_sum, int64_t{dp_index} * tp * tp + int64_t{tp} * (tp - 1) / 2) << "tp = " << tp;
    int64_t dp_sum = rank;
    dp_axis->all_reduce(&dp_sum, 1, DataType::kInt64, ReduceOp::kSum, kTimeout);
    const int64_t dp = n / tp;
    EXPECT_EQ(dp_sum, int64_t{tp_index} * dp + int64_t{tp} * dp * (dp - 1) / 2) << "tp = " << tp;
    std::vector<char> gathered(tp);
    const char mine = static_cast<char>(tp_index);
    tp_axis->all_gather(&mine, gathered.data(), 1, kTimeout);
    for (int i = 0; i < tp; ++i) EXPECT_EQ(gathered[i], i);
  }
  b.barrier(kTimeout);
}

// What save_async does: a communicator split off the first runs collectives on another thread
// while the first runs its own, each getting only its own results.
TEST_F(BackendTest, TwoCommunicatorsRunCollectivesFromTwoThreads) {
  std::unique_ptr<Backend> other = b.split(0, rank, kTimeout);
  ASSERT_NE(other, nullptr);
  constexpr int kRounds = 50;
  auto rounds = [&](Backend& backend, int64_t base) {
    int wrong = 0;
    for (int i = 0; i < kRounds; ++i) {
      std::vector<int64_t> data(4096, base + i + rank);
      backend.all_reduce(data.data(), data.size(), DataType::kInt64, ReduceOp::kSum, kTimeout);
      const int64_t expected = n * (base + i) + int64_t{n} * (n - 1) / 2;
      wrong += std::count_if(data.begin(), data.end(), [&](int64_t v) { return v != expected; }) > 0;
    }
    return wrong;
  };
  int background_wrong = -1;
  std::thread background([&] { background_wrong = rounds(*other, 1000000); });
  const int foreground_wrong = rounds(b, 0);
  background.join();
  EXPECT_EQ(foreground_wrong, 0);
  EXPECT_EQ(background_wrong, 0);
  b.barrier(kTimeout);
}

// NCCL only (one GPU): an init whose peer never comes fails within its timeout, naming the
// rank and the wait, instead of hanging.
TEST(NcclBackendTest, InitWithAMissingPeerTimesOut) {
  if (!nccl_requested()) GTEST_SKIP() << "needs MTO_BACKEND=nccl and a GPU";
  const auto timeout = std::chrono::milliseconds(3000);
  const auto start = std::chrono::steady_clock::now();
  try {
    NcclBackend::create(NcclBackend::new_unique_id(), 0, 2, 0, timeout);
    FAIL() << "init of rank 0 of 2 succeeded without rank 1";
  } catch (const DistributedError& e) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "missing peer: " << e.what() << " (after " << seconds << " s)\n";
    EXPECT_NE(std::string(e.what()).find("NCCL init failed on rank 0 of 2"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("did not join within 3 s"), std::string::npos);
    EXPECT_LT(seconds, 30.0);
  }
}

// NCCL only: two ranks of one communicator on the same GPU are refused by NCCL; both fail
// with an error that says so, and neither hangs. (mto's world never picks NCCL for ranks
// without a GPU of their own; this is what a user who forces it sees.)
TEST(NcclBackendTest, TwoRanksOnOneGpuFailClearly) {
  if (!nccl_requested()) GTEST_SKIP() << "needs MTO_BACKEND=nccl and a GPU";
  const std::string id = NcclBackend::new_unique_id();
  std::string errors[2];
  std::thread peer([&] {
    try {
      NcclBackend::create(id, 1, 2, 0, std::chrono::milliseconds(20000));
    } catch (const DistributedError& e) {
      errors[1] = e.what();
    }
  });
  try {
    NcclBackend::create(id, 0, 2, 0, std::chrono::milliseconds(20000));
  } catch (const DistributedError& e) {
    errors[0] = e.what();
  }
  peer.join();
  for (int r = 0; r < 2; ++r) {
    std::cout << "rank " << r << " on a shared GPU: " << errors[r] << "\n";
    EXPECT_NE(errors[r].find(absl::StrCat("NCCL init failed on rank ", r, " of 2")), std::string::npos)
        << errors[r];
  }
}

}  // namespace
}  // namespace mto
