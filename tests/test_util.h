// Shared helpers for the test suites: fresh random inputs with a printed
// seed, comparisons against double-precision references, bit patterns,
// small model shapes and configs, scratch directories and files, and
// running commands (the binaries under test) with their output captured.
// CUDA-only helpers are in tests/cuda/cuda_test_util.h.
//
// Every test draws a new seed (std::random_device) unless LATAM_TEST_SEED is
// set; a failing test prints the seed so the failure can be replayed with
//   LATAM_TEST_SEED=<seed> ctest -R <test>
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/tensor.h"
#include "model/config.pb.h"
#include "model/parameters.h"

namespace latam::testing {

inline uint64_t TestSeed() {
  if (const char* s = std::getenv("LATAM_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

// Base fixture: rng_ is freshly seeded per test; the seed is printed on failure.
class RandomTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = TestSeed();
    rng_.seed(seed_);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "[ seed ] rerun with LATAM_TEST_SEED=" << seed_ << "\n";
  }
  std::vector<float> Uniform(size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng_);
    return v;
  }
  std::vector<float> Normal(size_t n, float std = 1.0f) {
    std::normal_distribution<float> dist(0.0f, std);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng_);
    return v;
  }
  int UniformInt(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  // n token ids, uniform in [0, vocab).
  std::vector<int32_t> RandomIds(size_t n, int64_t vocab) {
    std::vector<int32_t> ids(n);
    for (auto& id : ids) id = UniformInt(0, static_cast<int>(vocab) - 1);
    return ids;
  }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

inline std::vector<double> ToDouble(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// |actual - expected| <= atol + rtol * |expected| for every element.
inline ::testing::AssertionResult AllClose(const float* actual, const std::vector<double>& expected, double atol,
                                           double rtol) {
  size_t bad = 0, first = 0;
  double worst = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double err = std::abs(static_cast<double>(actual[i]) - expected[i]);
    const double allowed = atol + rtol * std::abs(expected[i]);
    if (!(err <= allowed)) {  // also catches NaN
      if (bad == 0) first = i;
      ++bad;
    }
    worst = std::max(worst, err);
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os << bad << " of " << expected.size() << " elements differ (atol " << atol << ", rtol " << rtol << "); first at "
     << first << ": actual " << actual[first] << " expected " << expected[first] << "; worst abs error " << worst;
  return ::testing::AssertionFailure() << os.str();
}

inline ::testing::AssertionResult AllClose(const std::vector<float>& actual, const std::vector<double>& expected,
                                           double atol, double rtol) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure() << "size " << actual.size() << " != " << expected.size();
  }
  return AllClose(actual.data(), expected, atol, rtol);
}

// ||a - b|| / ||b|| (a floor of 1e-300 under ||b||^2).
inline double RelativeL2(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0.0, ref = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    diff += d * d;
    ref += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return std::sqrt(diff / std::max(ref, 1e-300));
}

// max |t| over an f32 host tensor.
inline double MaxAbs(const Tensor& t) {
  double m = 0.0;
  for (int64_t j = 0; j < t.numel(); ++j) m = std::max(m, static_cast<double>(std::abs(t.as<float>()[j])));
  return m;
}

// The derivative of `loss` along direction u (any nonzero vector over the
// f32 host tensor w, normalised here) two ways: g.u from the gradient g, and
// the 4-point central difference [-L(+2h) + 8L(+h) - 8L(-h) + L(-2h)] / 12h
// (truncation O(h^4)), moving w itself. w is restored afterwards.
struct DirectionalDerivative {
  double analytic = 0.0;
  double numeric = 0.0;
};
template <typename LossFn>
DirectionalDerivative CheckDirection(const Tensor& w, const Tensor& g, std::vector<float> u, double h,
                                     const LossFn& loss) {
  const int64_t n = w.numel();
  double norm = 0.0;
  for (float v : u) norm += static_cast<double>(v) * v;
  norm = std::sqrt(norm);
  DirectionalDerivative d;
  for (int64_t j = 0; j < n; ++j) {
    u[static_cast<size_t>(j)] = static_cast<float>(u[static_cast<size_t>(j)] / norm);
    d.analytic += static_cast<double>(g.as<float>()[j]) * u[static_cast<size_t>(j)];
  }
  const std::vector<float> saved(w.as<float>(), w.as<float>() + n);
  auto loss_at = [&](double step) {
    for (int64_t j = 0; j < n; ++j) {
      w.as<float>()[j] = static_cast<float>(saved[static_cast<size_t>(j)] + step * u[static_cast<size_t>(j)]);
    }
    return loss();
  };
  d.numeric = (-loss_at(2 * h) + 8 * loss_at(h) - 8 * loss_at(-h) + loss_at(-2 * h)) / (12 * h);
  std::copy(saved.begin(), saved.end(), w.as<float>());
  return d;
}

// A host copy of an f32 tensor on either device.
inline std::vector<float> HostCopy(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  CopyTensor(Tensor::Of(out.data(), t.shape), t);
  return out;
}

// The bit pattern of a 2- or 4-byte value (f32, bf16, int32), and back.
template <typename T>
uint32_t BitsOf(const T& v) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4);
  if constexpr (sizeof(T) == 2) {
    uint16_t u;
    std::memcpy(&u, &v, sizeof(u));
    return u;
  } else {
    uint32_t u;
    std::memcpy(&u, &v, sizeof(u));
    return u;
  }
}

inline float FloatFromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// A small Llama shape: dim = n_heads x head_dim, RoPE theta 1e4, norm eps
// 1e-5, no RoPE scaling. Fields are named at the call site:
//   SmallShape({.vocab = 13, .n_layers = 2, .n_heads = 4, ...}).
struct SmallModel {
  int64_t vocab = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t ffn_dim = 0;
  int64_t max_seq_len = 0;
  double init_std = 0.0;
  bool tied = false;
};

inline ModelShape SmallShape(const SmallModel& m) {
  ModelShape s;
  s.vocab = m.vocab;
  s.dim = m.n_heads * m.head_dim;
  s.n_layers = m.n_layers;
  s.n_heads = m.n_heads;
  s.n_kv_heads = m.n_kv_heads;
  s.head_dim = m.head_dim;
  s.ffn_dim = m.ffn_dim;
  s.tie_embeddings = m.tied;
  s.rope_theta = 10000.0;
  s.norm_eps = 1e-5;
  s.max_seq_len = m.max_seq_len;
  s.init_std = m.init_std;
  return s;
}

// The 4-layer model of the gradient-bucket and ZeRO tests: vocab 32, 4 query
// and 2 KV heads of 4, ffn 24, 8 positions, init std 0.1, untied.
inline ModelShape FourLayerShape() {
  return SmallShape({.vocab = 32,
                     .n_layers = 4,
                     .n_heads = 4,
                     .n_kv_heads = 2,
                     .head_dim = 4,
                     .ffn_dim = 24,
                     .max_seq_len = 8,
                     .init_std = 0.1,
                     .tied = false});
}

// The 8-layer model config of the checkpoint and layout tests: vocab 64,
// dim 32, 4 query and 2 KV heads, ffn 48, 16 positions, init std 0.1 (RoPE
// theta left at its default).
inline config::ModelConfig TinyModelConfig(bool tied) {
  config::ModelConfig m;
  m.set_vocab_size(64);
  m.set_dim(32);
  m.set_n_layers(8);
  m.set_n_heads(4);
  m.set_n_kv_heads(2);
  m.set_ffn_dim(48);
  m.set_max_seq_len(16);
  m.set_tie_embeddings(tied);
  m.set_init_std(0.1);
  return m;
}

// A fresh empty directory for the running test:
// <tmp>/<prefix>_<pid>_<test name>. The caller removes it.
inline std::filesystem::path FreshTestDir(const std::string& prefix) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      (prefix + "_" + std::to_string(getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::string ReadFileBytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Replaces p's contents with `bytes`; false when the write failed.
inline bool WriteFileBytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return out.good();
}

#ifdef LATAM_SOURCE_DIR
// A path in the source tree, e.g. SourcePath("configs/quickstart.textproto").
inline std::string SourcePath(const std::string& rel) { return std::string(LATAM_SOURCE_DIR) + "/" + rel; }
#endif
#ifdef LATAM_BIN_DIR
// A binary of this build, e.g. BinPath("latam-train").
inline std::string BinPath(const std::string& name) { return std::string(LATAM_BIN_DIR) + "/" + name; }
#endif

struct CommandResult {
  int exit_code = -1;  // -1 when the command did not exit normally
  std::string out, err;
};

// Runs `command` with /bin/sh in `cwd`, capturing its output through files
// in `scratch_dir`.
inline CommandResult RunCommand(const std::string& command, const std::filesystem::path& cwd,
                                const std::filesystem::path& scratch_dir) {
  const auto out = scratch_dir / "stdout.txt", err = scratch_dir / "stderr.txt";
  const std::string cmd =
      "cd '" + cwd.string() + "' && " + command + " >'" + out.string() + "' 2>'" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = ReadFileBytes(out);
  r.err = ReadFileBytes(err);
  return r;
}

// step -> loss of the training lines of a run's metrics.jsonl.
inline std::map<int64_t, double> TrainingLosses(const std::filesystem::path& metrics_jsonl) {
  std::map<int64_t, double> out;
  std::ifstream in(metrics_jsonl);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

// Whether `program` is on PATH.
inline bool HaveProgram(const std::string& program) {
  return std::system(("command -v " + program + " >/dev/null 2>&1").c_str()) == 0;
}

// Sets (or, with nullptr, unsets) an environment variable for its lifetime,
// then puts back what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    if (value != nullptr) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_.c_str(), old_.c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_, old_;
  bool had_ = false;
};

}  // namespace latam::testing
