// Tensor views, bf16 conversion, arenas, tensor tables, CRC-32C, the
// counter-based RNG and the POSIX Env.
#include <gtest/gtest.h>

#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <string>

#include "core/arena.h"
#include "core/crc32c.h"
#include "core/escape.h"
#include "core/env.h"
#include "core/random.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "tests/test_util.h"

namespace latam {
namespace {

TEST(EscapeTest, ControlBytesNeverReachTheTerminal) {
  using namespace std::string_literals;
  const std::string text = "step\0_0001\x1b[2J\x7f caf\xc3\xa9\n\tok\\"s;
  EXPECT_EQ(EscapeControlBytes(text), "step\\x00_0001\\x1b[2J\\x7f caf\xc3\xa9\n\tok\\");
  EXPECT_EQ(EscapeBytes(text), "step\\x00_0001\\x1b[2J\\x7f caf\\xc3\\xa9\\x0a\\x09ok\\x5c");
  EXPECT_EQ(EscapeBytes(""), "");
}

TEST(ShapeTest, NumelRowsColsAndPrinting) {
  const Shape s{2, 3, 5};
  EXPECT_EQ(s.rank(), 3);
  EXPECT_EQ(s.numel(), 30);
  EXPECT_EQ(s.rows(), 6);
  EXPECT_EQ(s.cols(), 5);
  EXPECT_EQ(s.str(), "[2, 3, 5]");
  EXPECT_EQ(Shape{}.numel(), 1);
  EXPECT_NE(s, (Shape{6, 5}));
}

TEST(TensorTest, RowsAndReshapeAreViews) {
  std::vector<float> data(24);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i);
  const Tensor t = Tensor::Of(data.data(), {4, 6});
  const Tensor rows = t.Rows(1, 3);
  EXPECT_EQ(rows.shape, (Shape{2, 6}));
  EXPECT_EQ(rows.as<float>()[0], 6.0f);
  EXPECT_EQ(t.Reshaped({2, 12}).as<float>(), data.data());
  EXPECT_EQ(t.str(), "f32[4, 6]@cpu");
}

TEST(TensorDeathTest, MismatchedAccessAborts) {
  std::vector<float> data(4);
  const Tensor t = Tensor::Of(data.data(), {4});
  EXPECT_DEATH(t.as<int32_t>(), "tensor holds f32, accessed as i32");
  EXPECT_DEATH(t.Reshaped({3}), "reshape");
  EXPECT_DEATH(CheckTensor(t, DType::kF32, Shape{2, 2}, Device::kCPU, "thing"), "thing: expected f32\\[2, 2\\]");
}

TEST(BF16Test, RoundsToNearestEven) {
  EXPECT_EQ(BF16::FromFloat(1.0f).bits, 0x3f80);
  EXPECT_EQ(BF16::FromFloat(1.0f).ToFloat(), 1.0f);
  // 1 + 2^-8 lies exactly halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
  EXPECT_EQ(BF16::FromFloat(1.0f + std::ldexp(1.0f, -8)).bits, 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even).
  EXPECT_EQ(BF16::FromFloat(1.0f + 3 * std::ldexp(1.0f, -8)).bits, 0x3f82);
  EXPECT_EQ(BF16::FromFloat(-2.5f).ToFloat(), -2.5f);
  EXPECT_TRUE(std::isnan(BF16::FromFloat(std::numeric_limits<float>::quiet_NaN()).ToFloat()));
  EXPECT_TRUE(std::isinf(BF16::FromFloat(std::numeric_limits<float>::infinity()).ToFloat()));
}

TEST(ArenaTest, AlignedZeroedAndMovable) {
  Arena a(Device::kCPU, 1000);
  ASSERT_NE(a.data(), nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % Arena::kAlignment, 0u);
  const auto* bytes = static_cast<const unsigned char*>(a.data());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(bytes[i], 0);
  void* p = a.data();
  Arena b = std::move(a);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from state is specified
  EXPECT_DEATH(b.View(990, DType::kF32, Shape{4}), "outside arena");
}

TEST(TensorTableTest, AdjacentEntriesAndAlignment) {
  TensorTable t;
  t.Add("a", DType::kF32, Shape{3});
  t.Add("b", DType::kF32, Shape{2, 2});
  t.Align(256);
  t.Add("c", DType::kI32, Shape{5});
  EXPECT_EQ(t.Find("a").offset, 0u);
  EXPECT_EQ(t.Find("b").offset, 12u);  // contiguous with a
  EXPECT_EQ(t.Find("c").offset, 256u);
  EXPECT_EQ(t.total_bytes(), 256u + 20u);
  Arena arena(Device::kCPU, t.total_bytes());
  const Tensor b = t.Get(arena, "b");
  EXPECT_EQ(b.shape, (Shape{2, 2}));
  EXPECT_EQ(static_cast<char*>(b.data) - static_cast<char*>(arena.data()), 12);
  EXPECT_DEATH(t.Add("a", DType::kF32, Shape{1}), "duplicate tensor name a");
}

TEST(Crc32cTest, KnownVectorsAndIncremental) {
  // Standard check value of CRC-32C and the RFC 3720 test vectors.
  EXPECT_EQ(Crc32c("123456789", 9), 0xe3069283u);
  std::vector<unsigned char> zeros(32, 0), ones(32, 0xff), inc(32);
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<unsigned char>(i);
  EXPECT_EQ(Crc32c(zeros.data(), 32), 0x8a9136aau);
  EXPECT_EQ(Crc32c(ones.data(), 32), 0x62a8ab43u);
  EXPECT_EQ(Crc32c(inc.data(), 32), 0x46dd794eu);
  // Continuing a CRC over a split buffer gives the whole buffer's CRC.
  EXPECT_EQ(Crc32c(inc.data() + 13, 19, Crc32c(inc.data(), 13)), 0x46dd794eu);
}

TEST(RandomTest, CounterBasedAndWellDistributed) {
  EXPECT_EQ(UniformAt(1, 2, 3), UniformAt(1, 2, 3));
  EXPECT_NE(UniformAt(1, 2, 3), UniformAt(1, 2, 4));
  EXPECT_NE(StreamId("model.norm.weight"), StreamId("model.norm.weighT"));
  // Moments of 200k normals: mean 0 +- 0.01, variance 1 +- 0.02.
  double sum = 0.0, sq = 0.0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double v = NormalAt(7, 11, static_cast<uint64_t>(i));
    sum += v;
    sq += v * v;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0, 0.02);
  std::vector<float> a(100), b(50);
  FillNormal(a.data(), 100, 2.0f, 9, 3, 0);
  FillNormal(b.data(), 50, 2.0f, 9, 3, 50);  // a shard starting at element 50
  for (int i = 0; i < 50; ++i) ASSERT_EQ(a[50 + i], b[i]);
}

TEST(ThreadsTest, SplitsTheCoresBetweenLocalRanks) {
  testing::ScopedEnv omp_threads("OMP_NUM_THREADS", nullptr);
  const int cpus = AvailableCpus();
  ASSERT_GE(cpus, 1);
  EXPECT_EQ(ConfigureCpuThreads(1), cpus);
  if (cpus < sysconf(_SC_NPROCESSORS_ONLN)) {
    // Pinned by a launcher (taskset, mpirun --bind-to): the mask is this rank's share.
    EXPECT_EQ(ConfigureCpuThreads(4), cpus);
  } else {
    EXPECT_EQ(ConfigureCpuThreads(cpus * 4), 1);  // never fewer than one thread
    if (cpus >= 2) {
      EXPECT_EQ(ConfigureCpuThreads(2), cpus / 2);
    }
  }
  // An explicit OMP_NUM_THREADS wins.
  setenv("OMP_NUM_THREADS", "3", 1);
  omp_set_num_threads(3);
  EXPECT_EQ(ConfigureCpuThreads(8), 3);
  omp_set_num_threads(cpus);
}

TEST(EnvTest, FilesDirectoriesAndAtomicWrites) {
  namespace fs = std::filesystem;
  Env* env = Env::Default();
  const std::string dir = (fs::temp_directory_path() / ("latam_env_" + std::to_string(getpid()))).string();
  ASSERT_TRUE(env->RemoveTree(dir).ok());
  ASSERT_TRUE(env->CreateDirs(dir + "/a/b").ok());
  EXPECT_TRUE(env->IsDirectory(dir + "/a/b"));

  // Appends larger and smaller than the buffer, then a header written last.
  const std::string big(200000, 'x');
  {
    auto f = env->NewWritableFile(dir + "/a/f");
    ASSERT_TRUE(f.ok()) << f.status().message();
    ASSERT_TRUE((*f)->Append("....").ok());
    ASSERT_TRUE((*f)->Append(big).ok());
    ASSERT_TRUE((*f)->Append("tail").ok());
    EXPECT_EQ((*f)->size(), 4 + big.size() + 4);
    ASSERT_TRUE((*f)->WriteAt(0, "head").ok());
    EXPECT_FALSE((*f)->WriteAt((*f)->size() - 2, "past").ok());
    ASSERT_TRUE((*f)->Sync().ok());
    ASSERT_TRUE((*f)->Close().ok());
    EXPECT_FALSE((*f)->Append("late").ok());
  }
  auto read = env->ReadFile(dir + "/a/f");
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, "head" + big + "tail");
  {
    auto f = env->NewAppendableFile(dir + "/a/f");
    ASSERT_TRUE(f.ok());
    EXPECT_EQ((*f)->size(), big.size() + 8);
    ASSERT_TRUE((*f)->Append("!").ok());
  }
  EXPECT_EQ(env->FileSize(dir + "/a/f").value(), big.size() + 9);

  ASSERT_TRUE(WriteFileAtomically(env, dir + "/a/g", "one").ok());
  ASSERT_TRUE(WriteFileAtomically(env, dir + "/a/g", "two").ok());
  EXPECT_EQ(env->ReadFile(dir + "/a/g").value(), "two");
  {
    auto abandoned = AtomicFile::Create(env, dir + "/a/g");
    ASSERT_TRUE(abandoned.ok());
    ASSERT_TRUE((*abandoned)->file().Append("three").ok());
    EXPECT_TRUE(env->FileExists(dir + "/a/g.tmp"));
  }
  EXPECT_FALSE(env->FileExists(dir + "/a/g.tmp"));
  EXPECT_EQ(env->ReadFile(dir + "/a/g").value(), "two");
  EXPECT_EQ(env->ListDir(dir + "/a").value(), (std::vector<std::string>{"b", "f", "g"}));
  ASSERT_TRUE(env->RenameFile(dir + "/a/g", dir + "/a/h").ok());
  ASSERT_TRUE(env->RemoveFile(dir + "/a/h").ok());
  ASSERT_TRUE(env->RemoveFile(dir + "/a/h").ok());  // already gone: fine
  ASSERT_TRUE(env->SyncDir(dir + "/a").ok());

  // Errors name the path and say why.
  auto expect_error = [](const Status& s, const std::string& path) {
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("No such file or directory"), std::string::npos) << s.message();
  };
  const std::string missing = dir + "/missing/x";
  expect_error(env->NewWritableFile(missing).status(), missing);
  expect_error(env->ReadFile(missing).status(), missing);
  EXPECT_EQ(env->ReadFile(missing).status().exit_code(), 2);
  expect_error(env->RenameFile(missing, dir + "/y"), missing);
  expect_error(env->FileSize(missing).status(), missing);
  expect_error(env->SyncDir(dir + "/missing"), dir + "/missing");
  expect_error(WriteFileAtomically(env, missing, "z"), missing + ".tmp");
  EXPECT_FALSE(env->ListDir(dir + "/missing").ok());
  EXPECT_FALSE(env->FileExists(missing));
  ASSERT_TRUE(env->RemoveTree(dir).ok());
  EXPECT_FALSE(env->FileExists(dir));
}

}  // namespace
}  // namespace latam

namespace latam {
namespace {

// Host arenas count their bytes while alive; a move hands the count over,
// and the peak stays until reset.
TEST(ArenaAccountingTest, LiveAndPeakHostBytes) {
  const size_t base = HostArenaLiveBytes();
  ResetHostArenaPeak();
  EXPECT_EQ(HostArenaPeakBytes(), base);
  {
    Arena a(Device::kCPU, 1000);
    EXPECT_EQ(HostArenaLiveBytes(), base + 1000);
    Arena b(Device::kCPU, 3000);
    EXPECT_EQ(HostArenaLiveBytes(), base + 4000);
    Arena c = std::move(b);
    EXPECT_EQ(HostArenaLiveBytes(), base + 4000);
    a = std::move(c);  // releases a's 1000 bytes
    EXPECT_EQ(HostArenaLiveBytes(), base + 3000);
    EXPECT_EQ(HostArenaPeakBytes(), base + 4000);
  }
  EXPECT_EQ(HostArenaLiveBytes(), base);
  EXPECT_EQ(HostArenaPeakBytes(), base + 4000);
  ResetHostArenaPeak();
  EXPECT_EQ(HostArenaPeakBytes(), base);
}

}  // namespace
}  // namespace latam
