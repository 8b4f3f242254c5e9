// The binaries as a user runs them: exit codes, error messages naming the
// field or file, a short training run's outputs (metrics.jsonl with falling
// loss, eval lines, the resolved config, a TensorBoard file whose records
// pass their CRC checks).
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "kernels/crc32c.h"
#include "trainer/config.h"
#include "trainer/tensorboard.pb.h"

namespace latam {
namespace {

namespace fs = std::filesystem;

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("latam_cli_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  RunResult Run(const std::string& args) {
    const fs::path out = dir_ / "stdout.txt", err = dir_ / "stderr.txt";
    const std::string cmd =
        "cd " + std::string(LATAM_SOURCE_DIR) + " && " + args + " >" + out.string() + " 2>" + err.string();
    const int status = std::system(cmd.c_str());
    RunResult r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = ReadFile(out);
    r.err = ReadFile(err);
    return r;
  }
  static std::string Bin(const std::string& name) { return std::string(LATAM_BIN_DIR) + "/" + name; }

  // A shard of a learnable stream and the quickstart config pointed at it.
  std::string PrepareRun(int steps) {
    const RunResult gen = Run(Bin("latam-data") + " synthesize --out " + (dir_ / "train.bin").string() +
                              " --vocab 512 --tokens 200000 --seed 3");
    EXPECT_EQ(gen.exit_code, 0) << gen.err;
    const RunResult gen_eval = Run(Bin("latam-data") + " synthesize --out " + (dir_ / "eval.bin").string() +
                                   " --vocab 512 --tokens 20000 --seed 3");
    EXPECT_EQ(gen_eval.exit_code, 0) << gen_eval.err;
    return Bin("latam-train") + " --config configs/quickstart.textproto --set train.steps=" + std::to_string(steps) +
           " --set data.train[0].path=" + (dir_ / "train.bin").string() +
           " --set data.eval[0].path=" + (dir_ / "eval.bin").string() +
           " --set train.run_dir=" + (dir_ / "run").string() + " --set train.eval_every=20 --set train.log_every=5";
  }

  fs::path dir_;
};

TEST_F(CliTest, PlanPrintsJsonWithoutMpiOrData) {
  const RunResult r = Run(Bin("latam-train") + " --config configs/llama3-8b.textproto --plan");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["parameters"].get<int64_t>(), 8030261248);
  for (const char* key : {"parameters_per_rank", "memory_bytes_per_rank", "flops_per_token", "layout"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
}

TEST_F(CliTest, BadInputExitsTwoNamingTheProblem) {
  struct Case {
    std::string args, expected;
  };
  const std::vector<Case> cases = {
      {Bin("latam-train") + " --config configs/quickstart.textproto --plan --set parallel.tensor=3",
       "model.n_heads: 4 is not divisible by parallel.tensor = 3"},
      {Bin("latam-train") + " --config configs/quickstart.textproto --plan --set train.steps=0",
       "train.steps: must be > 0"},
      {Bin("latam-train") + " --config configs/quickstart.textproto --set data.train[0].path=/nope/x.bin",
       "data.train[0].path: no such file: /nope/x.bin"},
      {Bin("latam-train") + " --config /nope/config.textproto", "/nope/config.textproto: cannot open"},
      {Bin("latam-train") + " --config configs/quickstart.textproto --bogus", "unknown argument '--bogus'"},
      {Bin("latam-train"), "--config is required"},
      {Bin("latam-data") + " inspect configs/quickstart.textproto", "is not a token shard"},
      {Bin("latam-data") + " synthesize --vocab 10", "--out is required"},
      {Bin("latam-data") + " frobnicate", "unknown command 'frobnicate'"},
  };
  for (const Case& c : cases) {
    const RunResult r = Run(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << c.args << "\nstderr: " << r.err;
  }
}

TEST_F(CliTest, TokenIdsOutsideTheVocabularyAreBadInput) {
  const RunResult gen =
      Run(Bin("latam-data") + " synthesize --out " + (dir_ / "big.bin").string() + " --vocab 1000 --tokens 50000");
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  const RunResult r = Run(Bin("latam-train") + " --config configs/quickstart.textproto --set train.steps=2" +
                          " --set data.train[0].path=" + (dir_ / "big.bin").string() + " --set train.run_dir=" +
                          (dir_ / "run").string() + " --set data.eval[0].path=" + (dir_ / "big.bin").string());
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("big.bin: token"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("outside model.vocab_size = 512"), std::string::npos) << r.err;
}

TEST_F(CliTest, ShortTrainingRunWritesMetricsConfigAndTensorBoard) {
  const RunResult r = Run(PrepareRun(40));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("step     40/40 | loss"), std::string::npos) << r.out;

  // metrics.jsonl: training lines with the contract's keys, loss falling;
  // eval lines at steps 20 and 40.
  std::ifstream metrics(dir_ / "run" / "metrics.jsonl");
  std::string line;
  std::vector<double> losses;
  std::vector<int64_t> eval_steps;
  while (std::getline(metrics, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) {
      for (const char* key : {"step", "loss", "lr", "grad_norm", "tokens_per_s", "step_ms"}) {
        ASSERT_TRUE(j.contains(key)) << key << " missing in " << line;
      }
      losses.push_back(j["loss"].get<double>());
    } else {
      ASSERT_TRUE(j.contains("eval_loss")) << line;
      ASSERT_TRUE(j.contains("eval_loss/synthetic")) << line;
      eval_steps.push_back(j["step"].get<int64_t>());
    }
  }
  ASSERT_GE(losses.size(), 5u);
  EXPECT_LT(losses.back(), losses.front() - 1.0) << "loss did not fall";
  EXPECT_EQ(eval_steps, (std::vector<int64_t>{20, 40}));

  // The resolved config round-trips through the loader with the overrides applied.
  auto resolved = LoadConfigFile((dir_ / "run" / "config.textproto").string());
  ASSERT_TRUE(resolved.ok()) << resolved.status().message();
  EXPECT_EQ(resolved->train().steps(), 40);

  // The TensorBoard file: every TFRecord's length and payload CRCs verify,
  // the first event is the file version, later ones carry the scalars.
  fs::path events;
  for (const auto& e : fs::directory_iterator(dir_ / "run")) {
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) events = e.path();
  }
  ASSERT_FALSE(events.empty());
  const std::string data = ReadFile(events);
  size_t pos = 0, records = 0;
  std::set<std::string> tags;
  while (pos < data.size()) {
    ASSERT_LE(pos + 12, data.size());
    uint64_t len = 0;
    uint32_t len_crc = 0, data_crc = 0;
    std::memcpy(&len, data.data() + pos, 8);
    std::memcpy(&len_crc, data.data() + pos + 8, 4);
    ASSERT_EQ(len_crc, MaskCrc32c(Crc32c(data.data() + pos, 8)));
    ASSERT_LE(pos + 12 + len + 4, data.size());
    std::memcpy(&data_crc, data.data() + pos + 12 + len, 4);
    ASSERT_EQ(data_crc, MaskCrc32c(Crc32c(data.data() + pos + 12, len)));
    tensorboard::Event event;
    ASSERT_TRUE(event.ParseFromArray(data.data() + pos + 12, static_cast<int>(len)));
    if (records == 0) {
      EXPECT_EQ(event.file_version(), "brain.Event:2");
    }
    for (const auto& v : event.summary().value()) tags.insert(v.tag());
    pos += 12 + len + 4;
    ++records;
  }
  EXPECT_GT(records, 5u);
  EXPECT_TRUE(tags.count("loss") && tags.count("grad_norm") && tags.count("eval_loss/synthetic"));
}

}  // namespace
}  // namespace latam
