// Batched reads of byte ranges: every range lands where it should, whether the ranges go
// through io_uring, fewer than one batch or many, in a process forked after the parent's
// ring was set up, or by pread where a seccomp filter refuses io_uring as container runtimes
// do; a range past the end of the file and a read the kernel fails are reported as
// File::read_at reports them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "serialization/checkpoint_error.h"
#include "serialization/file.h"
#include "serialization/read_ranges.h"
#include "tests/testing/errors.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace {

using ::testing::HasSubstr;
using test::error_of;

// A file of `size` bytes whose byte i is a function of i.
std::string make_file(size_t size) {
  const std::string path = test::make_temp_dir() + "/data";
  std::string bytes(size, '\0');
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>((i * 7919 + i / 251) & 0xff);
  write_file_synced(path, bytes);
  return path;
}

// Reads `count` strided pieces of `piece` bytes (every `stride` bytes from `first`, the way a
// slice along dimension 1 lies in a row-major tensor) and checks each against the file.
void expect_strided_reads(const std::string& path, size_t count, size_t piece, size_t stride,
                          size_t first) {
  const std::string bytes = read_file(path, 1 << 26);
  File file = File::open(path);
  std::vector<char> out(count * piece, '\x55');
  std::vector<ReadRange> ranges;
  for (size_t i = 0; i < count; ++i) ranges.push_back({out.data() + i * piece, piece, first + i * stride});
  read_ranges(file, ranges);
  for (size_t i = 0; i < count; ++i) {
    ASSERT_EQ(std::string(out.data() + i * piece, piece), bytes.substr(first + i * stride, piece))
        << "range " << i << " of " << count;
  }
}

// Whether this kernel lets this process use io_uring: kernel.io_uring_disabled is 0 and no
// seccomp filter is in place. False where that cannot be told (a kernel without the setting).
bool io_uring_allowed() {
  std::ifstream disabled("/proc/sys/kernel/io_uring_disabled");
  std::string value;
  if (!(disabled >> value) || value != "0") return false;
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("Seccomp:", 0) == 0) return line.back() == '0';
  }
  return false;
}

TEST(ReadRangesTest, StridedPiecesLandInTheirBuffers) {
  const std::string path = make_file(3 << 20);
  if (io_uring_allowed()) {
    EXPECT_TRUE(ranges_use_io_uring()) << "io_uring is allowed here, yet the ranges are read by pread";
  } else {
    std::cout << "this kernel or a seccomp filter refuses io_uring: the reads below go by pread\n";
  }
  expect_strided_reads(path, 1, 2048, 8192, 100);
  expect_strided_reads(path, 7, 2048, 8192, 2048);
  expect_strided_reads(path, kQueueDepth, 1024, 8192, 4096);
  expect_strided_reads(path, 3 * kQueueDepth + 5, 512, 2000, 3);  // several batches, unaligned
  expect_strided_reads(path, 2, 1 << 20, (1 << 20) + 3, 0);
}

TEST(ReadRangesTest, ARangePastTheEndIsReportedAsTruncation) {
  const std::string path = make_file(10000);
  File file = File::open(path);
  std::vector<char> out(3 * 4096);
  const std::string error = error_of<CheckpointError>([&] {
    read_ranges(file, {{out.data(), 4096, 0}, {out.data() + 4096, 4096, 8000}, {out.data() + 8192, 4096, 4096}});
  });
  EXPECT_THAT(error, HasSubstr("file " + path + " is truncated: expected 4096 bytes at offset 8000"));
  // The ranges that fit were read all the same.
  EXPECT_EQ(std::string(out.data(), 4096), read_file(path, 1 << 20).substr(0, 4096));
}

TEST(ReadRangesTest, AFailedReadNamesTheFileAndOffsetAsReadAtDoes) {
  const std::string dir = test::make_temp_dir();
  File file = File::open(dir);  // reading a directory fails with EISDIR
  std::vector<char> out(64);
  const std::string batched = error_of<CheckpointError>([&] {
    read_ranges(file, {{out.data(), 32, 0}, {out.data() + 32, 32, 32}});
  });
  const std::string single = error_of<CheckpointError>([&] { file.read_at(out.data(), 32, 0); });
  EXPECT_EQ(batched, single);
  EXPECT_THAT(batched, HasSubstr("cannot read at offset 0 of " + dir));
}

// Runs `body` in a child process and expects it to exit 0 (gtest failures there exit 1).
template <typename Body>
void expect_in_child(const Body& body) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    body();
    ::_exit(::testing::Test::HasFailure() ? 1 : 0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
}

TEST(ReadRangesTest, AForkedChildReadsThroughItsOwnRing) {
  const std::string path = make_file(1 << 20);
  expect_strided_reads(path, 40, 1000, 4000, 0);  // the parent's ring exists now
  expect_in_child([&] { expect_strided_reads(path, 40, 1000, 4000, 7); });
  expect_strided_reads(path, 40, 1000, 4000, 3);
}

// Makes io_uring_setup fail with ENOSYS in this process, as Docker's default profile does.
void refuse_io_uring() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program = {static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
  ASSERT_EQ(::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
  ASSERT_EQ(::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program), 0);
}

TEST(ReadRangesTest, WhereIoUringIsRefusedRangesAreReadByPread) {
  const std::string path = make_file(1 << 20);
  expect_in_child([&] {
    refuse_io_uring();
    EXPECT_FALSE(ranges_use_io_uring());
    expect_strided_reads(path, kQueueDepth + 9, 1000, 3000, 11);
  });
}

}  // namespace
}  // namespace mto
