// Shared helpers for the test suites: fresh random inputs with a printed
// seed, and element-wise comparison against double-precision references.
//
// Every test draws a new seed (std::random_device) unless LATAM_TEST_SEED is
// set; a failing test prints the seed so the failure can be replayed with
//   LATAM_TEST_SEED=<seed> ctest -R <test>
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

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
