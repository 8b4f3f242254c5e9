// The binaries as a user runs them: exit codes, error messages naming the
// field or file, a short training run's outputs (metrics.jsonl with falling
// loss, eval lines, the resolved config, a TensorBoard file whose records
// pass their CRC checks).
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/crc32c.h"
#include "data/chat.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "tests/test_util.h"
#include "trainer/config.h"
#include "trainer/tensorboard.pb.h"

#ifdef LATAM_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

namespace latam {
namespace {

namespace fs = std::filesystem;

using RunResult = testing::CommandResult;
using testing::BinPath;
using testing::ReadFileBytes;

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::FreshTestDir("latam_cli"); }
  void TearDown() override { fs::remove_all(dir_); }

  RunResult Run(const std::string& args) { return testing::RunCommand(args, LATAM_SOURCE_DIR, dir_); }

  // A shard of a learnable stream and the quickstart config pointed at it.
  std::string PrepareRun(int steps) {
    const RunResult gen = Run(BinPath("latam-data") + " synthesize --out " + (dir_ / "train.bin").string() +
                              " --vocab 512 --tokens 200000 --seed 3");
    EXPECT_EQ(gen.exit_code, 0) << gen.err;
    const RunResult gen_eval = Run(BinPath("latam-data") + " synthesize --out " + (dir_ / "eval.bin").string() +
                                   " --vocab 512 --tokens 20000 --seed 3");
    EXPECT_EQ(gen_eval.exit_code, 0) << gen_eval.err;
    return BinPath("latam-train") +
           " --config configs/quickstart.textproto --set train.steps=" + std::to_string(steps) +
           DataOverrides("train.bin", "eval.bin") + " --set train.run_dir=" + (dir_ / "run").string() +
           " --set train.eval_every=20 --set train.log_every=5";
  }

  // Points every train and eval dataset of the quickstart config at files in dir_.
  std::string DataOverrides(const std::string& train, const std::string& eval) const {
    // One process (the quickstart file is laid out for 4 ranks); the
    // synthetic shards have no tokenizer.
    std::string s = " --set parallel.tensor=1 --set parallel.pipeline=1 --set data.tokenizer=";
    for (int i = 0; i < 3; ++i) {
      s += " --set data.train[" + std::to_string(i) + "].path=" + (dir_ / train).string() + " --set data.eval[" +
           std::to_string(i) + "].path=" + (dir_ / eval).string();
    }
    return s;
  }

  fs::path dir_;
};

TEST_F(CliTest, PlanPrintsJsonWithoutMpiOrData) {
  const RunResult r = Run(BinPath("latam-train") + " --config configs/llama3-8b.textproto --plan");
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
      {BinPath("latam-train") + " --config configs/quickstart.textproto --plan --set parallel.tensor=3",
       "model.n_heads: 4 is not divisible by parallel.tensor = 3"},
      {BinPath("latam-train") + " --config configs/quickstart.textproto --plan --set train.steps=0",
       "train.steps: must be > 0"},
      {BinPath("latam-train") +
           " --config configs/quickstart.textproto --set parallel.tensor=1 --set parallel.pipeline=1" +
           " --set data.train[0].path=/nope/x.bin",
       "data.train[0].path: no such file: /nope/x.bin"},
      {BinPath("latam-train") + " --config /nope/config.textproto", "/nope/config.textproto: cannot open"},
      {BinPath("latam-train") + " --config configs/quickstart.textproto --bogus", "unknown argument '--bogus'"},
      {BinPath("latam-train"), "--config is required"},
      {BinPath("latam-data") + " inspect configs/quickstart.textproto", "is not a token shard"},
      {BinPath("latam-data") + " synthesize --vocab 10", "--out is required"},
      {BinPath("latam-data") + " frobnicate", "unknown command 'frobnicate'"},
      {BinPath("latam-data") + " encode --tokenizer configs --out x.bin README.md", "configs: is a directory"},
      {BinPath("latam-data") + " synthesize --out x.bin --vocab 9 --tokens 99999999999999999999",
       "--tokens: '99999999999999999999' is not a 64-bit integer"},
      // Flags are parsed whole and range-checked before the checkpoint is read.
      {BinPath("latam-generate") + " --checkpoint x --prompt y --max-new-tokens 1e12",
       "--max-new-tokens 1e12: not an integer"},
      {BinPath("latam-generate") + " --checkpoint x --prompt y --max-new-tokens 4000000000",
       "--max-new-tokens 4000000000: must be in [0, 2147483647]"},
      {BinPath("latam-generate") + " --checkpoint x --prompt y --temperature inf",
       "--temperature inf: must be a finite number"},
      {BinPath("latam-generate") + " --checkpoint x --prompt y --temperature -1", "--temperature -1: must be >= 0"},
      {BinPath("latam-generate") + " --checkpoint x --prompt y --top-p 2", "--top-p 2: must be in (0, 1]"},
      {BinPath("latam-generate") + " --checkpoint x --prompt y --seed -1", "--seed -1: not an unsigned integer"},
      {BinPath("latam-generate") + " --checkpoint x --prompt y --seed 12abc", "--seed 12abc: not an unsigned integer"},
  };
  for (const Case& c : cases) {
    const RunResult r = Run(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << c.args << "\nstderr: " << r.err;
  }
}

TEST_F(CliTest, TokenIdsOutsideTheVocabularyAreBadInput) {
  const RunResult gen =
      Run(BinPath("latam-data") + " synthesize --out " + (dir_ / "big.bin").string() + " --vocab 8000 --tokens 50000");
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  const RunResult r = Run(BinPath("latam-train") + " --config configs/quickstart.textproto --set train.steps=2" +
                          DataOverrides("big.bin", "big.bin") + " --set train.run_dir=" + (dir_ / "run").string());
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("big.bin: token"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("outside model.vocab_size = 4096"), std::string::npos) << r.err;
}

bool GpuVisible() {
#ifdef LATAM_HAVE_CUDA
  return cuda::DeviceCount() > 0;
#else
  return false;
#endif
}

// train.device=cuda trains on the GPU (metrics carry mfu) and its checkpoint
// resumes on the CPU; without a GPU the run stops before any allocation
// with exit 2, naming the rank and the key.
TEST_F(CliTest, CudaDeviceTrainsOrNamesTheMissingGpu) {
  const std::string gpu = PrepareRun(4) + " --set train.device=cuda --set train.precision=bf16 --set train.save_every=4";
  const RunResult r = Run(gpu);
  if (!GpuVisible()) {
    EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
    EXPECT_NE(r.err.find("train.device=cuda: rank 0"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir_ / "run" / "checkpoints")) << "nothing is written before the device check";
    return;
  }
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  std::ifstream metrics(dir_ / "run" / "metrics.jsonl");
  std::string line;
  int with_mfu = 0;
  while (std::getline(metrics, line)) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    ASSERT_TRUE(j.contains("mfu")) << line;
    EXPECT_GT(j["mfu"].get<double>(), 0.0);
    ++with_mfu;
  }
  EXPECT_GT(with_mfu, 0);
  const std::map<int64_t, double> gpu_losses = testing::TrainingLosses(dir_ / "run" / "metrics.jsonl");
  // The GPU checkpoint of step 4 resumes on the CPU, in fp32.
  const RunResult cpu = Run(PrepareRun(6) + " --set train.log_every=1 --resume auto");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.out << cpu.err;
  const std::map<int64_t, double> losses = testing::TrainingLosses(dir_ / "run" / "metrics.jsonl");
  ASSERT_TRUE(losses.count(5) && gpu_losses.count(4)) << cpu.out;
  EXPECT_NEAR(losses.at(5), gpu_losses.at(4), 0.1 * gpu_losses.at(4));
}

// A train.attention, train.device or train.precision value the config does
// not define stops the run at start-up (exit 2, naming the field and the
// values it takes), GPU or not, before anything is written.
TEST_F(CliTest, UnknownEnumValuesAreBadInput) {
  const struct {
    std::string set, expected;
  } cases[] = {
      {"train.attention=fastest", "train.attention: 'fastest' is not one of auto, simple, wgmma, wgmma_tma"},
      {"train.attention=wgmma-tma", "train.attention: 'wgmma-tma' is not one of auto, simple, wgmma, wgmma_tma"},
      {"train.device=tpu", "train.device: 'tpu' is not one of cpu, cuda"},
      {"train.precision=fp16", "train.precision: 'fp16' is not one of fp32, bf16"},
  };
  const std::string run = PrepareRun(2);
  for (const auto& c : cases) {
    const RunResult r = Run(run + " --set train.device=cuda --set " + c.set);
    EXPECT_EQ(r.exit_code, 2) << c.set << "\n" << r.out << r.err;
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << c.set << "\nstderr: " << r.err;
    EXPECT_FALSE(fs::exists(dir_ / "run")) << c.set;
  }
}

// The same in a config file: the field's path and the values it takes.
TEST_F(CliTest, UnknownEnumValueInConfigFileIsBadInput) {
  std::string config = ReadFileBytes(testing::SourcePath("configs/quickstart.textproto"));
  const size_t at = config.find("device: cpu");
  ASSERT_NE(at, std::string::npos) << "configs/quickstart.textproto sets no train.device";
  config.replace(at, std::strlen("device: cpu"), "device: tpu");
  const fs::path path = dir_ / "bad.textproto";
  std::ofstream(path) << config;
  const RunResult r = Run(BinPath("latam-train") + " --config " + path.string() + " --plan");
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find(path.string() + ": line "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("train.device: 'tpu' is not one of cpu, cuda"), std::string::npos) << r.err;
}

// train-tokenizer -> encode -> inspect, and tokenize/detokenize, as a user
// runs them; the shard holds exactly the tokenizer's ids between BOS (the
// trained tokenizer has <|begin_of_text|>, so encode adds it by default)
// and EOS per document; `--bos-token ''` writes no BOS.
TEST_F(CliTest, DataPipelineFromCorpusToShards) {
  std::vector<std::string> docs;
  {
    std::ofstream jsonl(dir_ / "corpus.jsonl");
    for (int i = 0; i < 40; ++i) {
      docs.push_back("Documento " + std::to_string(i) + ": el niño y la niña leen; a ação do coração, \"ñandú\".");
      jsonl << "{\"text\": \""
            << "Documento " << i << ": el niño y la niña leen; a ação do coração, \\\"ñandú\\\".\", \"id\": " << i
            << "}\n";
      if (i == 10) jsonl << "\n";  // blank lines are skipped
    }
  }
  const std::string plain = "Texto plano en un archivo: una línea.\r\nOtra línea con 123456 y 🙂.\n";
  std::ofstream(dir_ / "plain.txt", std::ios::binary) << plain;
  docs.push_back(plain);
  const std::string corpus = (dir_ / "corpus.jsonl").string() + " " + (dir_ / "plain.txt").string();
  const std::string tok = (dir_ / "tok.json").string();

  RunResult r = Run(BinPath("latam-data") + " train-tokenizer --out " + tok + " --vocab-size 320 " + corpus);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("41 documents"), std::string::npos) << r.err;
  r = Run(BinPath("latam-data") + " encode --tokenizer " + tok + " --out " + (dir_ / "s.bin").string() + " " + corpus);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("encode: 41 documents"), std::string::npos) << r.err;

  auto tokenizer = data::Tokenizer::Load(tok);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().message();
  auto shard = data::ShardReader::Open((dir_ / "s.bin").string());
  ASSERT_TRUE(shard.ok()) << shard.status().message();
  ASSERT_EQ((*shard)->n_docs(), docs.size());
  const uint32_t eos = *(*tokenizer)->TokenId("<|end_of_text|>");
  const uint32_t bos = *(*tokenizer)->TokenId("<|begin_of_text|>");
  r = Run(BinPath("latam-data") + " encode --tokenizer " + tok + " --bos-token '' --out " +
          (dir_ / "nobos.bin").string() + " " + corpus);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto nobos = data::ShardReader::Open((dir_ / "nobos.bin").string());
  ASSERT_TRUE(nobos.ok()) << nobos.status().message();
  ASSERT_EQ((*nobos)->n_docs(), docs.size());
  for (size_t d = 0; d < docs.size(); ++d) {
    const std::vector<uint32_t> text = (*tokenizer)->Encode(docs[d]);
    std::vector<uint32_t> expected = {bos};
    expected.insert(expected.end(), text.begin(), text.end());
    expected.push_back(eos);
    const std::vector<uint32_t> got((*shard)->tokens() + (*shard)->DocOffset(d),
                                    (*shard)->tokens() + (*shard)->DocOffset(d + 1));
    ASSERT_EQ(got, expected) << "document " << d;
    expected.erase(expected.begin());  // without BOS
    const std::vector<uint32_t> got_nobos((*nobos)->tokens() + (*nobos)->DocOffset(d),
                                          (*nobos)->tokens() + (*nobos)->DocOffset(d + 1));
    ASSERT_EQ(got_nobos, expected) << "document " << d << " without BOS";
  }

  r = Run(BinPath("latam-data") + " inspect " + (dir_ / "s.bin").string() + " --tokenizer " + tok);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto info = nlohmann::json::parse(r.out);
  EXPECT_EQ(info["documents"].get<int>(), 41);
  EXPECT_EQ(info["sample_text"].get<std::string>(), "<|begin_of_text|>" + docs[0] + "<|end_of_text|>");

  // tokenize | detokenize gives the text back.
  std::ofstream(dir_ / "in.txt", std::ios::binary) << plain;
  r = Run(BinPath("latam-data") + " tokenize --tokenizer " + tok + " < " + (dir_ / "in.txt").string() + " | " +
          BinPath("latam-data") + " detokenize --tokenizer " + tok);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, plain);

  // A model vocabulary smaller than the tokenizer's is refused at start-up.
  r = Run(BinPath("latam-train") + " --config configs/quickstart.textproto" + DataOverrides("s.bin", "s.bin") +
          " --set data.tokenizer=" + tok +
          " --set model.vocab_size=256 --set train.run_dir=" + (dir_ / "run").string());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("model.vocab_size: 256 is smaller than the " + std::to_string((*tokenizer)->vocab_size()) +
                       " tokens of data.tokenizer"),
            std::string::npos)
      << r.err;

  // Bad input: exit 2 with the file, line, field or id named.
  std::ofstream(dir_ / "bad.jsonl") << "{\"text\": \"ok\"}\n{\"text\": 5}\n";
  std::ofstream(dir_ / "broken.jsonl") << "{\"text\": \"ok\"}\n{\"text\": \"x\"\n";
  // A number no double holds (the JSON library throws out_of_range, not parse_error).
  std::ofstream(dir_ / "huge.jsonl") << "{\"text\": \"ok\"}\n{\"text\": 1e400}\n";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {" encode --tokenizer " + tok + " --out " + (dir_ / "x.bin").string() + " " + (dir_ / "bad.jsonl").string(),
       "bad.jsonl:2: no string field \"text\""},
      {" encode --tokenizer " + tok + " --out " + (dir_ / "x.bin").string() + " " + (dir_ / "broken.jsonl").string(),
       "broken.jsonl:2: not valid JSON"},
      {" encode --tokenizer " + tok + " --out " + (dir_ / "x.bin").string() + " " + (dir_ / "huge.jsonl").string(),
       "huge.jsonl:2: not valid JSON"},
      {" encode --tokenizer " + tok + " --out " + (dir_ / "x.bin").string() + " --eos-token '<nope>' " + corpus,
       "has no token '<nope>'"},
      {" encode --tokenizer " + tok + " --out " + (dir_ / "x.bin").string() + " --bos-token '<bos?>' " + corpus,
       "has no token '<bos?>' (set --bos-token, or --bos-token '' for none)"},
      {" encode --tokenizer /nope/tok.json --out x.bin " + corpus, "/nope/tok.json: cannot open tokenizer file"},
      {" train-tokenizer --out " + (dir_ / "t2.json").string() + " --vocab-size 10 " + corpus, "--vocab-size 10"},
      {" train-tokenizer --vocab-size 1000 " + corpus, "--out is required"},
      {" tokenize --tokenizer " + (dir_ / "plain.txt").string() + " < /dev/null", "plain.txt: not valid JSON"},
  };
  for (const auto& [args, expected] : bad) {
    r = Run(BinPath("latam-data") + args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(expected), std::string::npos) << args << "\nstderr: " << r.err;
  }
  EXPECT_FALSE(fs::exists(dir_ / "x.bin")) << "a failed encode must not leave a shard behind";
  EXPECT_FALSE(fs::exists(dir_ / "x.bin.tmp"));
  std::ofstream(dir_ / "ids.txt") << "1 2 99999";
  r = Run(BinPath("latam-data") + " detokenize --tokenizer " + tok + " < " + (dir_ / "ids.txt").string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("'99999' is not a token id"), std::string::npos) << r.err;
}

// encode-chat as a user runs it: conversations from two files become one
// version 2 shard whose documents are the template's tokens and mask
// (data/chat.h), the summary and inspect report the share of tokens in the
// loss, and every bad input exits 2 naming the file and line.
TEST_F(CliTest, EncodeChatWritesConversationsWithTheirLossMask) {
  const std::string tok = (dir_ / "tok.json").string();
  std::ofstream(dir_ / "corpus.txt") << "Hola, ¿cómo estás? Muy bien, gracias. El niño lee un libro.\n";
  RunResult r = Run(BinPath("latam-data") + " train-tokenizer --out " + tok + " --vocab-size 300 --min-frequency 1 " +
                    (dir_ / "corpus.txt").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;

  const std::string first =
      "{\"messages\": [{\"role\": \"system\", \"content\": \"Eres breve.\"}, "
      "{\"role\": \"user\", \"content\": \"Hola, ¿cómo estás?\"}, "
      "{\"role\": \"assistant\", \"content\": \"Muy bien, gracias.\"}]}";
  const std::string second =
      "{\"id\": 2, \"messages\": [{\"role\": \"user\", \"content\": \"Escribe <|eot_id|> por favor\"}, "
      "{\"role\": \"assistant\", \"content\": \"<|eot_id|>\"}, {\"role\": \"user\", \"content\": \"Gracias\"}]}";
  std::ofstream(dir_ / "a.jsonl") << first << "\n\n";
  std::ofstream(dir_ / "b.jsonl") << second << "\n" << first << "\n";
  const std::string out = (dir_ / "chat.bin").string();
  r = Run(BinPath("latam-data") + " encode-chat --tokenizer " + tok + " --out " + out + " " +
          (dir_ / "a.jsonl").string() + " " + (dir_ / "b.jsonl").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("encode-chat: 3 conversations -> "), std::string::npos) << r.err;

  auto tokenizer = data::Tokenizer::Load(tok);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().message();
  auto chat = data::ChatTemplate::Create(tokenizer->get(), tok);
  ASSERT_TRUE(chat.ok()) << chat.status().message();
  auto shard = data::ShardReader::Open(out);
  ASSERT_TRUE(shard.ok()) << shard.status().message();
  ASSERT_EQ((*shard)->version(), 2u);
  ASSERT_EQ((*shard)->n_docs(), 3u);
  uint64_t in_loss = 0;
  size_t d = 0;
  for (const std::string& line : {first, second, first}) {
    auto messages = data::ParseConversation(line);
    ASSERT_TRUE(messages.ok()) << messages.status().message();
    const data::EncodedChat e = chat->Encode(*messages);
    const uint64_t begin = (*shard)->DocOffset(d), end = (*shard)->DocOffset(d + 1);
    ASSERT_EQ(std::vector<uint32_t>((*shard)->tokens() + begin, (*shard)->tokens() + end), e.tokens) << d;
    for (uint64_t i = begin; i < end; ++i) {
      EXPECT_EQ((*shard)->CountsInLoss(i), e.loss_mask[i - begin] != 0) << d << " " << i;
      in_loss += (*shard)->CountsInLoss(i) ? 1 : 0;
    }
    ++d;
  }
  // The typed "<|eot_id|>" stayed text: one <|eot_id|> per message.
  const uint32_t eot = *(*tokenizer)->AddedTokenId("<|eot_id|>");
  EXPECT_EQ(std::count((*shard)->tokens(), (*shard)->tokens() + (*shard)->n_tokens(), eot), 3 + 3 + 3);
  const std::string summary = std::string(" -> ")
                                  .append(std::to_string((*shard)->n_tokens()))
                                  .append(" tokens, ")
                                  .append(std::to_string(in_loss))
                                  .append(" in the loss (");
  EXPECT_NE(r.err.find(summary), std::string::npos) << r.err << "\nexpected " << summary;

  r = Run(BinPath("latam-data") + " inspect " + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto info = nlohmann::json::parse(r.out);
  EXPECT_EQ(info["version"].get<int>(), 2);
  EXPECT_TRUE(info["loss_mask"].get<bool>());
  EXPECT_EQ(info["loss_tokens"].get<uint64_t>(), in_loss);
  EXPECT_NEAR(info["loss_fraction"].get<double>(),
              static_cast<double>(in_loss) / static_cast<double>((*shard)->n_tokens()), 1e-12);

  // Bad input: exit 2, the file and line named, no shard left behind.
  const std::string ok_line = first + "\n";
  const std::vector<std::pair<std::string, std::string>> bad_files = {
      {"{\"messages\": [{\"role\": \"user\"", "not valid JSON"},
      {"{\"text\": \"hola\"}", "no \"messages\" list"},
      {"{\"messages\": [{\"content\": \"hola\"}]}", "messages[0] has no string \"role\""},
      {"{\"messages\": [{\"role\": \"user\"}]}", "messages[0] has no \"content\""},
      {"{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}", "messages[0]: unknown role \"robot\""},
      {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}", "the conversation has no assistant message"},
      {"{\"messages\": [{\"role\": \"assistant\", \"content\": [\"x\"]}]}",
       "messages[0]: \"content\" is array, not a string"},
      {"{\"messages\": [{\"role\": \"assistant\", \"content\": \"\xc3(\"}]}", "invalid UTF-8 at byte"},
  };
  for (size_t i = 0; i < bad_files.size(); ++i) {
    const fs::path file = dir_ / ("bad" + std::to_string(i) + ".jsonl");
    std::ofstream(file, std::ios::binary) << ok_line << "\n" << bad_files[i].first << "\n";
    r = Run(BinPath("latam-data") + " encode-chat --tokenizer " + tok + " --out " + (dir_ / "x.bin").string() + " " +
            file.string());
    EXPECT_EQ(r.exit_code, 2) << bad_files[i].first << "\n" << r.err;
    const std::string expected = file.string() + ":3: " + bad_files[i].second;
    EXPECT_NE(r.err.find(expected), std::string::npos) << "expected " << expected << "\nstderr: " << r.err;
  }
  EXPECT_FALSE(fs::exists(dir_ / "x.bin"));
  EXPECT_FALSE(fs::exists(dir_ / "x.bin.tmp"));

  // A tokenizer without the chat template's special tokens.
  const std::string old_tok = (dir_ / "old.json").string();
  r = Run(BinPath("latam-data") + " train-tokenizer --out " + old_tok +
          " --vocab-size 300 --special '<|begin_of_text|>' --special '<|end_of_text|>' " +
          (dir_ / "corpus.txt").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Run(BinPath("latam-data") + " encode-chat --tokenizer " + old_tok + " --out " + (dir_ / "x.bin").string() + " " +
          (dir_ / "a.jsonl").string());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(old_tok + ": has no added token '<|start_header_id|>'"), std::string::npos) << r.err;
  r = Run(BinPath("latam-data") + " encode-chat --tokenizer " + tok + " --out " + (dir_ / "x.bin").string());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("no conversation files given"), std::string::npos) << r.err;
  r = Run(BinPath("latam-data") + " encode-chat --tokenizer " + tok + " --out " + (dir_ / "x.bin").string() + " " +
          (dir_ / "missing.jsonl").string());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("missing.jsonl"), std::string::npos) << r.err;
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
    } else if (j.contains("checkpoint/bytes")) {
      // The quickstart config saves at its last step.
      for (const char* key : {"checkpoint/write_s", "checkpoint/bytes_per_s", "checkpoint/snapshot_ms",
                              "checkpoint/save_s"}) {
        ASSERT_TRUE(j.contains(key)) << key << " missing in " << line;
      }
      EXPECT_GT(j["checkpoint/bytes"].get<double>(), 0.0);
    } else {
      ASSERT_TRUE(j.contains("eval_loss")) << line;
      for (const char* name : {"eval_loss/es", "eval_loss/pt", "eval_loss/indigenous"}) {
        ASSERT_TRUE(j.contains(name)) << name << " missing in " << line;
      }
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
  const std::string data = ReadFileBytes(events);
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
  EXPECT_TRUE(tags.count("loss") && tags.count("grad_norm") && tags.count("eval_loss/es"));
}

}  // namespace
}  // namespace latam
