// safetensors files, Hugging Face weight directories and config.json.
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "checkpoint/hf_config.h"
#include "checkpoint/safetensors.h"
#include "tests/test_util.h"

namespace latam::ckpt {
namespace {

namespace fs = std::filesystem;

class TempDirTest : public latam::testing::RandomTest {
 protected:
  void SetUp() override {
    RandomTest::SetUp();
    char tmpl[] = "/tmp/latam_st_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    fs::remove_all(dir_);
    RandomTest::TearDown();
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  static void WriteBytes(const std::string& path, const std::string& bytes) {
    ASSERT_TRUE(testing::WriteFileBytes(path, bytes));
  }
  static std::string ReadBytes(const std::string& path) { return testing::ReadFileBytes(path); }
  // A safetensors file assembled by hand: length, header padded to 8, data.
  static std::string Assemble(std::string header, const std::string& data) {
    header.append((8 - header.size() % 8) % 8, ' ');
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) {
      out[static_cast<size_t>(i)] = static_cast<char>((uint64_t{header.size()} >> (8 * i)) & 0xff);
    }
    return out + header + data;
  }

  // Writes `tensors` (float data converted to each entry's dtype) with the writer.
  Status WriteFile(const std::string& path, const std::vector<StEntry>& entries,
                   const std::vector<std::vector<float>>& data, const StMetadata& metadata = {}) {
    SafetensorsWriter w(path, entries, metadata);
    LATAM_RETURN_IF_ERROR(w.Begin());
    for (size_t i = 0; i < entries.size(); ++i) {
      std::vector<char> bytes(data[i].size() * StDTypeSize(entries[i].dtype));
      ConvertFromF32(entries[i].dtype, data[i].data(), data[i].size(), bytes.data());
      LATAM_RETURN_IF_ERROR(w.Append(entries[i].name, bytes.data(), bytes.size()));
    }
    return w.Finish();
  }

  static StEntry Entry(const std::string& name, StDType dtype, std::vector<int64_t> shape) {
    StEntry e;
    e.name = name;
    e.dtype = dtype;
    e.shape = std::move(shape);
    return e;
  }

  fs::path dir_;
};

using testing::BitsOf;
using testing::FloatFromBits;

// Expects a bad-input status whose message mentions every one of `needles`.
::testing::AssertionResult BadInput(const Status& s, std::initializer_list<std::string> needles) {
  if (s.ok()) return ::testing::AssertionFailure() << "expected an error, got ok";
  if (s.code() != StatusCode::kInvalidInput) {
    return ::testing::AssertionFailure() << "expected kInvalidInput, got: " << s.message();
  }
  for (const std::string& n : needles) {
    if (s.message().find(n) == std::string::npos) {
      return ::testing::AssertionFailure() << "message lacks \"" << n << "\": " << s.message();
    }
  }
  return ::testing::AssertionSuccess();
}

// Exported-model helpers: a random model, a producer that serves it, and a
// bitwise check of what a directory reads back.
class Safetensors : public TempDirTest {
 protected:
  void MakeModel(int n) {
    specs_.clear();
    values_.clear();
    for (int i = 0; i < n; ++i) {
      HfTensorSpec s;
      s.name = "model.layers." + std::to_string(i) + ".mlp.up_proj.weight";
      s.shape = {UniformInt(1, 9), UniformInt(1, 9)};
      if (i == n / 2) s.shape = {16, 16};  // larger than the small shard limit on its own
      specs_.push_back(s);
      values_[s.name] = Normal(static_cast<size_t>(s.shape[0] * s.shape[1]));
    }
  }
  HfTensorProducer Producer() {
    return [this](const std::string& name, std::vector<float>* data) {
      produced_.push_back(name);
      *data = values_.at(name);
      return Status::Ok();
    };
  }
  void ExpectReadsBack(const HfWeights& w, StDType dtype) {
    std::set<std::string> names(w.names().begin(), w.names().end());
    ASSERT_EQ(names.size(), specs_.size());
    for (const HfTensorSpec& s : specs_) {
      ASSERT_TRUE(names.count(s.name)) << s.name;
      const StEntry* e = w.Find(s.name);
      ASSERT_NE(e, nullptr);
      EXPECT_EQ(e->shape, s.shape);
      EXPECT_EQ(e->dtype, dtype);
      const std::vector<float>& want = values_.at(s.name);
      std::vector<float> got(want.size());
      ASSERT_TRUE(w.ReadF32(s.name, got.data()).ok());
      for (size_t k = 0; k < want.size(); ++k) {
        const uint32_t expect =
            dtype == StDType::kF32 ? BitsOf(want[k]) : static_cast<uint32_t>(F32ToBF16Bits(want[k])) << 16;
        ASSERT_EQ(BitsOf(got[k]), expect) << s.name << "[" << k << "]";
      }
    }
  }
  std::vector<HfTensorSpec> specs_;
  std::map<std::string, std::vector<float>> values_;
  std::vector<std::string> produced_;
};

class HfConfig : public TempDirTest {};

// ---------------------------------------------------------------------------
// dtypes

TEST_F(Safetensors, DTypeNamesAndSizes) {
  for (StDType d : {StDType::kF32, StDType::kBF16, StDType::kF16}) {
    StDType back = StDType::kF32;
    ASSERT_TRUE(ParseStDType(StDTypeName(d), &back));
    EXPECT_EQ(back, d);
  }
  EXPECT_STREQ(StDTypeName(StDType::kBF16), "BF16");
  EXPECT_EQ(StDTypeSize(StDType::kF32), 4u);
  EXPECT_EQ(StDTypeSize(StDType::kBF16), 2u);
  EXPECT_EQ(StDTypeSize(StDType::kF16), 2u);
  StDType d = StDType::kF32;
  for (const char* bad : {"I64", "F64", "bf16", "", "F8_E4M3"}) EXPECT_FALSE(ParseStDType(bad, &d)) << bad;
}

TEST_F(Safetensors, Bf16RoundsToNearestEven) {
  struct Case {
    uint32_t f32;
    uint16_t bf16;
  };
  const Case cases[] = {
      {0x3f800000u, 0x3f80},  // 1.0 exact
      {0x3f808000u, 0x3f80},  // 1 + 2^-8: tie, mantissa even -> down
      {0x3f818000u, 0x3f82},  // 1 + 3 * 2^-8: tie, mantissa odd -> up
      {0x3f808001u, 0x3f81},  // just above the tie -> up
      {0x3f807fffu, 0x3f80},  // just below the tie -> down
      {0xbf818000u, 0xbf82},  // negative tie, odd -> away from zero
      {0x00000000u, 0x0000},  // +0
      {0x80000000u, 0x8000},  // -0
      {0x00018000u, 0x0002},  // subnormal tie, odd -> up
      {0x7f7fffffu, 0x7f80},  // FLT_MAX rounds to +inf
      {0x7f800000u, 0x7f80},  // +inf
      {0xff800000u, 0xff80},  // -inf
  };
  for (const Case& c : cases) {
    EXPECT_EQ(F32ToBF16Bits(FloatFromBits(c.f32)), c.bf16) << std::hex << c.f32;
    EXPECT_EQ(BitsOf(BF16BitsToF32(c.bf16)), static_cast<uint32_t>(c.bf16) << 16);
  }
  // NaNs (quiet, signalling with a low payload that truncation would turn
  // into inf, negative) stay NaN.
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu}) {
    EXPECT_TRUE(std::isnan(BF16BitsToF32(F32ToBF16Bits(FloatFromBits(nan))))) << std::hex << nan;
  }
}

TEST_F(Safetensors, F16DecodesExactly) {
  EXPECT_EQ(F16BitsToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16BitsToF32(0xc000), -2.0f);
  EXPECT_EQ(F16BitsToF32(0x7bff), 65504.0f);
  EXPECT_EQ(F16BitsToF32(0x3555), (1.0f + 0x155 / 1024.0f) * 0.25f);  // 0.333252
  EXPECT_EQ(F16BitsToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16BitsToF32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(F16BitsToF32(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(BitsOf(F16BitsToF32(0x8000)), 0x80000000u);
  EXPECT_EQ(F16BitsToF32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16BitsToF32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(F16BitsToF32(0x7e00)));
  EXPECT_TRUE(std::isnan(F16BitsToF32(0x7c01)));
}

// ---------------------------------------------------------------------------
// Writer and reader

TEST_F(Safetensors, RoundTripF32AndBf16) {
  std::vector<StEntry> entries;
  std::vector<std::vector<float>> data;
  const int n = UniformInt(3, 8);
  for (int i = 0; i < n; ++i) {
    std::vector<int64_t> shape;
    const int rank = UniformInt(1, 3);
    for (int r = 0; r < rank; ++r) shape.push_back(UniformInt(1, 7));
    entries.push_back(Entry("model.layers." + std::to_string(i) + ".w", i % 2 ? StDType::kBF16 : StDType::kF32, shape));
  }
  entries.push_back(Entry("scalar", StDType::kF32, {}));
  entries.push_back(Entry("empty", StDType::kBF16, {0, 3}));
  for (const StEntry& e : entries) data.push_back(Normal(static_cast<size_t>(e.numel())));
  const StMetadata meta = {{"format", "pt"}, {"note", "round trip"}};
  const std::string path = Path("rt.safetensors");
  ASSERT_TRUE(WriteFile(path, entries, data, meta).ok());
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ((*f)->metadata(), meta);
  EXPECT_EQ((*f)->data_start() % 8, 0u);
  ASSERT_EQ((*f)->entries().size(), entries.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const StEntry& got = (*f)->entries()[i];
    EXPECT_EQ(got.name, entries[i].name);
    EXPECT_EQ(got.dtype, entries[i].dtype);
    EXPECT_EQ(got.shape, entries[i].shape);
    EXPECT_EQ(got.begin, offset);  // contiguous in entry order
    offset = got.end;
    ASSERT_EQ((*f)->Find(got.name), &got);

    std::vector<float> out(data[i].size() + 1, 12345.0f);
    ASSERT_TRUE((*f)->ReadF32(got.name, out.data()).ok());
    EXPECT_EQ(out.back(), 12345.0f);  // nothing written past the tensor
    std::vector<uint16_t> raw16(data[i].size());
    std::vector<float> raw32(data[i].size());
    void* raw = got.dtype == StDType::kF32 ? static_cast<void*>(raw32.data()) : static_cast<void*>(raw16.data());
    ASSERT_TRUE((*f)->ReadRaw(got.name, raw).ok());
    for (size_t k = 0; k < data[i].size(); ++k) {
      if (got.dtype == StDType::kF32) {
        ASSERT_EQ(BitsOf(out[k]), BitsOf(data[i][k]));
        ASSERT_EQ(BitsOf(raw32[k]), BitsOf(data[i][k]));
      } else {
        ASSERT_EQ(raw16[k], F32ToBF16Bits(data[i][k]));
        ASSERT_EQ(BitsOf(out[k]), static_cast<uint32_t>(raw16[k]) << 16);
      }
    }
  }
  EXPECT_EQ(fs::file_size(path), (*f)->data_start() + offset);
  EXPECT_EQ((*f)->Find("absent"), nullptr);
  std::vector<float> dummy(4);
  EXPECT_TRUE(BadInput((*f)->ReadF32("absent", dummy.data()), {path, "absent"}));
}

TEST_F(Safetensors, Bf16EdgeValuesThroughFile) {
  const std::vector<float> values = {1.0f,
                                     FloatFromBits(0x3f808000u),
                                     FloatFromBits(0x3f818000u),
                                     FloatFromBits(0x7f7fffffu),
                                     std::numeric_limits<float>::infinity(),
                                     -std::numeric_limits<float>::infinity(),
                                     std::numeric_limits<float>::quiet_NaN(),
                                     FloatFromBits(0x7f800001u),
                                     -0.0f};
  const std::string path = Path("edge.safetensors");
  ASSERT_TRUE(WriteFile(path, {Entry("x", StDType::kBF16, {static_cast<int64_t>(values.size())})}, {values}).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  std::vector<float> out(values.size());
  ASSERT_TRUE((*f)->ReadF32("x", out.data()).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 1.0f);
  EXPECT_EQ(BitsOf(out[2]), 0x3f820000u);
  EXPECT_EQ(out[3], std::numeric_limits<float>::infinity());
  EXPECT_EQ(out[4], std::numeric_limits<float>::infinity());
  EXPECT_EQ(out[5], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(out[6]));
  EXPECT_TRUE(std::isnan(out[7]));
  EXPECT_EQ(BitsOf(out[8]), 0x80000000u);
}

TEST_F(Safetensors, HeaderIsPaddedTo8Bytes) {
  for (int len = 1; len <= 17; ++len) {
    const std::string path = Path("pad" + std::to_string(len) + ".safetensors");
    const std::string name(static_cast<size_t>(len), 'n');
    ASSERT_TRUE(WriteFile(path, {Entry(name, StDType::kF32, {1})}, {{2.5f}}).ok());
    const std::string bytes = ReadBytes(path);
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) {
      n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[static_cast<size_t>(i)])) << (8 * i);
    }
    EXPECT_EQ((8 + n) % 8, 0u) << len;
    ASSERT_EQ(bytes.size(), 8 + n + 4);
    const std::string header = bytes.substr(8, n);
    const size_t close = header.rfind('}');
    ASSERT_NE(close, std::string::npos);
    for (size_t i = close + 1; i < header.size(); ++i) EXPECT_EQ(header[i], ' ');
    const auto j = nlohmann::json::parse(header);
    EXPECT_EQ(j[name]["dtype"], "F32");
    EXPECT_EQ(j[name]["data_offsets"], nlohmann::json::array({0, 4}));
    float v = 0;
    std::memcpy(&v, bytes.data() + 8 + n, 4);
    EXPECT_EQ(v, 2.5f);
  }
}

TEST_F(Safetensors, DecodesHandBuiltFile) {
  // Three tensors in header order b, a, c; their data deliberately not in
  // header order: a at [0, 6), b at [6, 10), c at [10, 18).
  const std::string header = R"({"__metadata__":{"format":"pt"},)"
                             R"("b":{"dtype":"F16","shape":[2],"data_offsets":[6,10]},)"
                             R"("a":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},)"
                             R"("c":{"dtype":"F32","shape":[1,2],"data_offsets":[10,18]}})";
  const unsigned char data[] = {
      0x80, 0x3f, 0x00, 0xc0, 0x49, 0x40,  // a: bf16 1.0, -2.0, 3.140625
      0x00, 0x3c, 0x00, 0xb8,              // b: f16 1.0, -0.5
      0x00, 0x00, 0x20, 0x41,              // c: f32 10.0
      0x00, 0x00, 0xc0, 0x7f,              //    f32 NaN
  };
  const std::string path = Path("hand.safetensors");
  WriteBytes(path, Assemble(header, std::string(reinterpret_cast<const char*>(data), sizeof(data))));
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().message();
  ASSERT_EQ((*f)->entries().size(), 3u);
  EXPECT_EQ((*f)->entries()[0].name, "b");
  EXPECT_EQ((*f)->entries()[1].name, "a");
  EXPECT_EQ((*f)->entries()[2].name, "c");
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  const StEntry* c = (*f)->Find("c");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(c->begin, 10u);
  EXPECT_EQ(c->end, 18u);
  float a[3], b[2], cv[2];
  ASSERT_TRUE((*f)->ReadF32("a", a).ok());
  ASSERT_TRUE((*f)->ReadF32("b", b).ok());
  ASSERT_TRUE((*f)->ReadF32("c", cv).ok());
  EXPECT_EQ(a[0], 1.0f);
  EXPECT_EQ(a[1], -2.0f);
  EXPECT_EQ(a[2], 3.140625f);
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], -0.5f);
  EXPECT_EQ(cv[0], 10.0f);
  EXPECT_TRUE(std::isnan(cv[1]));
  uint16_t raw[3];
  ASSERT_TRUE((*f)->ReadRaw("a", raw).ok());
  EXPECT_EQ(raw[2], 0x4049);
}

TEST_F(Safetensors, RejectsMalformedFiles) {
  const std::string ok_header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string eight(8, '\x01');
  struct Case {
    std::string file;
    std::string bytes;
    std::vector<std::string> needles;
  };
  std::string huge_len(8, '\0');
  huge_len[0] = static_cast<char>(0xe8);  // 1000
  huge_len[1] = 0x03;
  const std::vector<Case> cases = {
      {"short.safetensors", "abc", {"shorter than the 8-byte"}},
      {"len.safetensors", huge_len + "{}      ", {"header length 1000"}},
      {"json.safetensors", Assemble("{\"w\": [1, 2", ""), {"not valid JSON"}},
      {"array.safetensors", Assemble("[1, 2]", ""), {"not a JSON object"}},
      {"trunc.safetensors", Assemble(ok_header, eight.substr(0, 6)), {"'w'", "outside"}},
      {"range.safetensors",
       Assemble(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", eight),
       {"'w'", "outside"}},
      {"count.safetensors",
       Assemble(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,6]}})", eight),
       {"'w'", "needs 8"}},
      {"dtype.safetensors",
       Assemble(R"({"w":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", eight),
       {"'w'", "unsupported dtype 'I64'"}},
      {"shape.safetensors",
       Assemble(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
       {"'w'", "shape"}},
      {"offs.safetensors",
       Assemble(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", eight),
       {"'w'", "data_offsets"}},
      {"nodtype.safetensors", Assemble(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", eight), {"'w'", "dtype"}},
      {"overlap.safetensors",
       Assemble(R"({"u":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("v":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                eight),
       {"'u'", "'v'", "overlap"}},
      {"meta.safetensors", Assemble(R"({"__metadata__":{"k":1}})", ""), {"__metadata__", "'k'"}},
  };
  for (const Case& c : cases) {
    const std::string path = Path(c.file);
    WriteBytes(path, c.bytes);
    auto f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok()) << c.file;
    EXPECT_TRUE(BadInput(f.status(), {path})) << c.file;
    for (const std::string& n : c.needles) {
      EXPECT_NE(f.status().message().find(n), std::string::npos) << c.file << ": " << f.status().message();
    }
  }
  // A file cut short after a good header: the data no longer fits.
  const std::string path = Path("cut.safetensors");
  ASSERT_TRUE(
      WriteFile(path, {Entry("a", StDType::kF32, {4}), Entry("big", StDType::kF32, {16})}, {Normal(4), Normal(16)})
          .ok());
  fs::resize_file(path, fs::file_size(path) - 4);
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(BadInput(f.status(), {path, "'big'"}));
  EXPECT_TRUE(BadInput(SafetensorsFile::Open(Path("missing.safetensors")).status(), {Path("missing.safetensors")}));
}

TEST_F(Safetensors, WriterChecksItsInput) {
  const std::string path = Path("w.safetensors");
  const std::vector<float> four = Normal(4);
  {
    SafetensorsWriter w(path, {Entry("a", StDType::kF32, {4}), Entry("b", StDType::kBF16, {2, 2})});
    ASSERT_TRUE(w.Begin().ok());
    EXPECT_TRUE(fs::exists(path + ".tmp"));
    EXPECT_TRUE(BadInput(w.Append("a", four.data(), 12), {path, "'a'", "needs 16", "got 12"}));
    EXPECT_TRUE(BadInput(w.Append("b", four.data(), 8), {path, "'b'", "out of order", "'a'"}));
    ASSERT_TRUE(w.Append("a", four.data(), 16).ok());
    EXPECT_TRUE(BadInput(w.Finish(), {path, "'b'"}));  // b never written
    EXPECT_TRUE(BadInput(w.Append("b", four.data(), 16), {path, "'b'", "needs 8"}));
  }
  // Abandoned before Finish: neither the temporary nor the final file remains.
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_FALSE(fs::exists(path));

  SafetensorsWriter dup(path, {Entry("a", StDType::kF32, {1}), Entry("a", StDType::kF32, {1})});
  EXPECT_TRUE(BadInput(dup.Begin(), {path, "duplicate", "'a'"}));
  SafetensorsWriter neg(path, {Entry("a", StDType::kF32, {-1})});
  EXPECT_TRUE(BadInput(neg.Begin(), {path, "'a'", "shape"}));
}

// ---------------------------------------------------------------------------
// Hugging Face directories

TEST_F(Safetensors, ShardedExportReadsBackBitwise) {
  for (StDType dtype : {StDType::kBF16, StDType::kF32}) {
    MakeModel(UniformInt(8, 14));
    const std::string out = Path(std::string("sharded_") + StDTypeName(dtype));
    const uint64_t limit = 160;
    produced_.clear();
    ASSERT_TRUE(WriteHfWeights(out, specs_, dtype, Producer(), limit).ok());
    // Each tensor was produced exactly once, in order.
    std::vector<std::string> order;
    for (const HfTensorSpec& s : specs_) order.push_back(s.name);
    EXPECT_EQ(produced_, order);

    // Expected greedy packing, computed independently.
    std::vector<std::vector<std::string>> shards;
    uint64_t current = 0, total = 0;
    for (const HfTensorSpec& s : specs_) {
      const uint64_t bytes = static_cast<uint64_t>(s.shape[0] * s.shape[1]) * StDTypeSize(dtype);
      if (shards.empty() || current + bytes > limit) {
        shards.emplace_back();
        current = 0;
      }
      shards.back().push_back(s.name);
      current += bytes;
      total += bytes;
    }
    ASSERT_GT(shards.size(), 2u);
    EXPECT_FALSE(fs::exists(fs::path(out) / kHfSingleFile));

    const auto index = nlohmann::json::parse(ReadBytes((fs::path(out) / kHfIndexFile).string()));
    EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
    const auto& map = index["weight_map"];
    EXPECT_EQ(map.size(), specs_.size());
    const int count = static_cast<int>(shards.size());
    for (int k = 0; k < count; ++k) {
      const std::string file = HfShardName(k + 1, count);
      for (const std::string& name : shards[static_cast<size_t>(k)]) EXPECT_EQ(map.at(name), file) << name;
      auto f = SafetensorsFile::Open((fs::path(out) / file).string());
      ASSERT_TRUE(f.ok()) << f.status().message();
      EXPECT_EQ((*f)->metadata(), (StMetadata{{"format", "pt"}}));
      EXPECT_EQ((*f)->entries().size(), shards[static_cast<size_t>(k)].size());
    }
    EXPECT_EQ(HfShardName(2, 12), "model-00002-of-00012.safetensors");

    auto w = HfWeights::Open(out);
    ASSERT_TRUE(w.ok()) << w.status().message();
    EXPECT_TRUE((*w)->sharded());
    ExpectReadsBack(**w, dtype);
    for (const auto& entry : fs::directory_iterator(out)) {
      EXPECT_EQ(entry.path().extension() == ".tmp", false) << entry.path();
    }
  }
}

TEST_F(Safetensors, SingleFileExportAndStaleFiles) {
  MakeModel(5);
  const std::string out = Path("single");
  ASSERT_TRUE(WriteHfWeights(out, specs_, StDType::kF32, Producer()).ok());
  EXPECT_TRUE(fs::exists(fs::path(out) / kHfSingleFile));
  EXPECT_FALSE(fs::exists(fs::path(out) / kHfIndexFile));
  auto w = HfWeights::Open(out);
  ASSERT_TRUE(w.ok()) << w.status().message();
  EXPECT_FALSE((*w)->sharded());
  ExpectReadsBack(**w, StDType::kF32);

  // Re-exported sharded into the same directory: the old single file goes.
  ASSERT_TRUE(WriteHfWeights(out, specs_, StDType::kBF16, Producer(), 64).ok());
  EXPECT_FALSE(fs::exists(fs::path(out) / kHfSingleFile));
  w = HfWeights::Open(out);
  ASSERT_TRUE(w.ok()) << w.status().message();
  ExpectReadsBack(**w, StDType::kBF16);
  // Fewer, larger shards: the surplus shard files go.
  ASSERT_TRUE(WriteHfWeights(out, specs_, StDType::kBF16, Producer(), 300).ok());
  std::set<std::string> listed, present;
  const auto index = nlohmann::json::parse(ReadBytes((fs::path(out) / kHfIndexFile).string()));
  for (const auto& [name, file] : index["weight_map"].items()) listed.insert(file.get<std::string>());
  for (const auto& entry : fs::directory_iterator(out)) present.insert(entry.path().filename().string());
  listed.insert(kHfIndexFile);
  EXPECT_EQ(present, listed);
  EXPECT_GT(listed.size(), 2u);
  w = HfWeights::Open(out);
  ASSERT_TRUE(w.ok()) << w.status().message();
  ExpectReadsBack(**w, StDType::kBF16);
  // And back to a single file: the old index and shards go; other files stay.
  WriteBytes((fs::path(out) / "config.json").string(), "{}");
  WriteBytes((fs::path(out) / "model-1-of-2.safetensors").string(), "not ours");
  ASSERT_TRUE(WriteHfWeights(out, specs_, StDType::kF32, Producer()).ok());
  std::set<std::string> files;
  for (const auto& entry : fs::directory_iterator(out)) files.insert(entry.path().filename().string());
  EXPECT_EQ(files, (std::set<std::string>{kHfSingleFile, "config.json", "model-1-of-2.safetensors"}));
  w = HfWeights::Open(out);
  ASSERT_TRUE(w.ok()) << w.status().message();
  ExpectReadsBack(**w, StDType::kF32);
}

TEST_F(Safetensors, ExportErrors) {
  MakeModel(3);
  const std::string out = Path("err");
  const Status bad_dtype = WriteHfWeights(out, specs_, StDType::kF16, Producer());
  EXPECT_TRUE(BadInput(bad_dtype, {out, "F16"}));
  const Status failing = WriteHfWeights(out, specs_, StDType::kF32, [](const std::string& name, std::vector<float>*) {
    return Status::InvalidInput("no data for " + name);
  });
  EXPECT_TRUE(BadInput(failing, {out, specs_[0].name}));
  // One value too many, so the first tensor already fails whatever its
  // random shape (a 1 x 1 one would take a single value).
  const Status short_data =
      WriteHfWeights(out, specs_, StDType::kF32, [this](const std::string& name, std::vector<float>* d) {
        d->assign(values_.at(name).size() + 1, 0.0f);
        return Status::Ok();
      });
  EXPECT_FALSE(short_data.ok());
  EXPECT_NE(short_data.message().find(specs_[0].name), std::string::npos) << short_data.message();
  for (const auto& entry : fs::directory_iterator(out)) ADD_FAILURE() << "left behind: " << entry.path();
}

TEST_F(Safetensors, OpenErrorsNameDirFileAndTensor) {
  EXPECT_TRUE(BadInput(HfWeights::Open(dir_.string()).status(), {dir_.string(), kHfSingleFile}));

  MakeModel(6);
  const std::string out = Path("broken");
  ASSERT_TRUE(WriteHfWeights(out, specs_, StDType::kF32, Producer(), 100).ok());
  const std::string index_path = (fs::path(out) / kHfIndexFile).string();
  auto index = nlohmann::json::parse(ReadBytes(index_path));
  const std::string shard = index["weight_map"][specs_[0].name];

  auto ghost = index;
  ghost["weight_map"]["ghost.weight"] = shard;
  WriteBytes(index_path, ghost.dump());
  EXPECT_TRUE(BadInput(HfWeights::Open(out).status(), {"'ghost.weight'", index_path, shard}));

  auto missing = index;
  missing["weight_map"][specs_[1].name] = "model-00009-of-00009.safetensors";
  WriteBytes(index_path, missing.dump());
  EXPECT_TRUE(BadInput(HfWeights::Open(out).status(), {"model-00009-of-00009.safetensors", specs_[1].name}));

  WriteBytes(index_path, "{\"weight_map\": ");
  EXPECT_TRUE(BadInput(HfWeights::Open(out).status(), {index_path}));

  WriteBytes(index_path, index.dump());
  auto w = HfWeights::Open(out);
  ASSERT_TRUE(w.ok()) << w.status().message();
  float x = 0;
  EXPECT_TRUE(BadInput((*w)->ReadF32("nope", &x), {out, "'nope'"}));
}

// ---------------------------------------------------------------------------
// config.json

config::ModelConfig FullModel(bool scaled, bool tie) {
  config::ModelConfig m;
  m.set_vocab_size(32003);
  m.set_dim(384);
  m.set_n_layers(5);
  m.set_n_heads(6);
  m.set_n_kv_heads(2);
  m.set_ffn_dim(1024);
  m.set_rope_theta(123456.5);
  m.set_norm_eps(1e-6);
  m.set_max_seq_len(4096);
  m.set_tie_embeddings(tie);
  m.set_init_std(0.0173);
  if (scaled) {
    m.mutable_rope_scaling()->set_factor(8);
    m.mutable_rope_scaling()->set_low_freq_factor(1.5);
    m.mutable_rope_scaling()->set_high_freq_factor(4.25);
    m.mutable_rope_scaling()->set_original_max_position_embeddings(2048);
  }
  return m;
}

TEST_F(HfConfig, RoundTrip) {
  for (bool scaled : {false, true}) {
    for (bool tie : {false, true}) {
      const config::ModelConfig m = FullModel(scaled, tie);
      const std::string text = HfConfigJson(m, "bfloat16", 1, 2);
      auto parsed = ParseHfConfigText(text, "mem/config.json");
      ASSERT_TRUE(parsed.ok()) << parsed.status().message();
      std::string diff;
      google::protobuf::util::MessageDifferencer differ;
      differ.ReportDifferencesToString(&diff);
      EXPECT_TRUE(differ.Compare(m, parsed->model)) << diff << "\n" << text;
      EXPECT_EQ(parsed->torch_dtype, "bfloat16");
      EXPECT_EQ(parsed->bos_token_id, 1);
      EXPECT_EQ(parsed->eos_token_id, 2);
      EXPECT_EQ(parsed->eos_token_ids, std::vector<int64_t>{2});
    }
  }
}

TEST_F(HfConfig, JsonHasWhatTransformersNeeds) {
  config::ModelConfig m = FullModel(false, true);
  m.mutable_rope_scaling()->set_factor(0);  // present but off: still null
  const std::string text = HfConfigJson(m, "float32", -1, -1);
  EXPECT_EQ(text.substr(0, 4), "{\n  ");
  const auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["hidden_size"], 384);
  EXPECT_EQ(j["intermediate_size"], 1024);
  EXPECT_EQ(j["num_hidden_layers"], 5);
  EXPECT_EQ(j["num_attention_heads"], 6);
  EXPECT_EQ(j["num_key_value_heads"], 2);
  EXPECT_EQ(j["head_dim"], 64);
  EXPECT_EQ(j["vocab_size"], 32003);
  EXPECT_EQ(j["rope_theta"], 123456.5);
  EXPECT_EQ(j["rms_norm_eps"], 1e-6);
  EXPECT_EQ(j["max_position_embeddings"], 4096);
  EXPECT_EQ(j["tie_word_embeddings"], true);
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_EQ(j["attention_bias"], false);
  EXPECT_EQ(j["mlp_bias"], false);
  EXPECT_EQ(j["initializer_range"], 0.0173);
  EXPECT_EQ(j["torch_dtype"], "float32");
  EXPECT_TRUE(j["rope_scaling"].is_null());
  EXPECT_EQ(j["use_cache"], true);
  EXPECT_EQ(j["pretraining_tp"], 1);
  EXPECT_FALSE(j.contains("bos_token_id"));
  EXPECT_FALSE(j.contains("eos_token_id"));

  const auto s = nlohmann::json::parse(HfConfigJson(FullModel(true, false), "bfloat16", 7, 8));
  EXPECT_EQ(s["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(s["rope_scaling"]["factor"], 8.0);
  EXPECT_EQ(s["rope_scaling"]["low_freq_factor"], 1.5);
  EXPECT_EQ(s["rope_scaling"]["high_freq_factor"], 4.25);
  EXPECT_EQ(s["rope_scaling"]["original_max_position_embeddings"], 2048);
  EXPECT_EQ(s["bos_token_id"], 7);
  EXPECT_EQ(s["eos_token_id"], 8);
}

// The values of meta-llama/Llama-3.1-8B's published config.json.
constexpr char kLlama31_8B[] = R"({
  "architectures": [
    "LlamaForCausalLM"
  ],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [
    128001,
    128008,
    128009
  ],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}
)";

TEST_F(HfConfig, ParsesLlama31_8B) {
  const std::string path = Path("config.json");
  WriteBytes(path, kLlama31_8B);
  auto c = ParseHfConfig(path);
  ASSERT_TRUE(c.ok()) << c.status().message();
  const config::ModelConfig& m = c->model;
  EXPECT_EQ(m.dim(), 4096);
  EXPECT_EQ(m.ffn_dim(), 14336);
  EXPECT_EQ(m.n_layers(), 32);
  EXPECT_EQ(m.n_heads(), 32);
  EXPECT_EQ(m.n_kv_heads(), 8);
  EXPECT_EQ(m.vocab_size(), 128256);
  EXPECT_EQ(m.rope_theta(), 500000.0);
  EXPECT_EQ(m.norm_eps(), 1e-5);
  EXPECT_EQ(m.max_seq_len(), 131072);
  EXPECT_FALSE(m.tie_embeddings());
  EXPECT_EQ(m.init_std(), 0.02);
  ASSERT_TRUE(m.has_rope_scaling());
  EXPECT_EQ(m.rope_scaling().factor(), 8.0);
  EXPECT_EQ(m.rope_scaling().low_freq_factor(), 1.0);
  EXPECT_EQ(m.rope_scaling().high_freq_factor(), 4.0);
  EXPECT_EQ(m.rope_scaling().original_max_position_embeddings(), 8192);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_EQ(c->eos_token_id, 128001);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));

  // Written back out, it parses to the same model.
  auto again = ParseHfConfigText(HfConfigJson(m, c->torch_dtype, c->bos_token_id, c->eos_token_id), path);
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(m, again->model));
}

TEST_F(HfConfig, DefaultsAndErrors) {
  const auto base = nlohmann::json::parse(kLlama31_8B);
  const std::string path = Path("config.json");
  auto parse = [&](const nlohmann::json& j) {
    WriteBytes(path, j.dump(2));
    return ParseHfConfig(path);
  };

  // Optional keys fall back to transformers' defaults.
  auto minimal = base;
  for (const char* k :
       {"num_key_value_heads", "rope_scaling", "rope_theta", "rms_norm_eps", "max_position_embeddings",
        "tie_word_embeddings", "head_dim", "torch_dtype", "bos_token_id", "eos_token_id", "initializer_range"}) {
    minimal.erase(k);
  }
  auto c = parse(minimal);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->model.n_kv_heads(), 32);
  EXPECT_FALSE(c->model.has_rope_scaling());
  EXPECT_EQ(c->model.rope_theta(), 10000.0);
  EXPECT_EQ(c->model.norm_eps(), 1e-6);
  EXPECT_EQ(c->model.max_seq_len(), 2048);
  EXPECT_EQ(c->torch_dtype, "");
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_EQ(c->eos_token_id, -1);

  auto with_head_dim = base;
  with_head_dim["head_dim"] = 128;
  with_head_dim["rope_scaling"] = nullptr;
  c = parse(with_head_dim);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_FALSE(c->model.has_rope_scaling());

  auto old_key = base;
  old_key["rope_scaling"].erase("rope_type");
  old_key["rope_scaling"]["type"] = "llama3";
  c = parse(old_key);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->model.rope_scaling().factor(), 8.0);

  struct Case {
    std::string what;
    nlohmann::json j;
    std::string key;
  };
  std::vector<Case> cases;
  auto edit = [&](const std::string& what, const std::function<void(nlohmann::json*)>& f, const std::string& key) {
    nlohmann::json j = base;
    f(&j);
    cases.push_back({what, j, key});
  };
  edit(
      "missing hidden_size", [](nlohmann::json* j) { j->erase("hidden_size"); }, "hidden_size");
  edit(
      "string vocab", [](nlohmann::json* j) { (*j)["vocab_size"] = "128256"; }, "vocab_size");
  edit(
      "fractional layers", [](nlohmann::json* j) { (*j)["num_hidden_layers"] = 31.5; }, "num_hidden_layers");
  edit(
      "string theta", [](nlohmann::json* j) { (*j)["rope_theta"] = "big"; }, "rope_theta");
  edit(
      "bool tie", [](nlohmann::json* j) { (*j)["tie_word_embeddings"] = 1; }, "tie_word_embeddings");
  edit(
      "gelu", [](nlohmann::json* j) { (*j)["hidden_act"] = "gelu"; }, "hidden_act");
  edit(
      "head_dim", [](nlohmann::json* j) { (*j)["head_dim"] = 64; }, "head_dim");
  edit(
      "attention bias", [](nlohmann::json* j) { (*j)["attention_bias"] = true; }, "attention_bias");
  edit(
      "mlp bias", [](nlohmann::json* j) { (*j)["mlp_bias"] = true; }, "mlp_bias");
  edit(
      "mistral",
      [](nlohmann::json* j) {
        (*j)["model_type"] = "mistral";
        (*j)["architectures"] = {"MistralForCausalLM"};
      },
      "model_type");
  edit(
      "linear rope", [](nlohmann::json* j) { (*j)["rope_scaling"]["rope_type"] = "linear"; }, "rope_scaling.rope_type");
  edit(
      "rope factor", [](nlohmann::json* j) { (*j)["rope_scaling"].erase("factor"); }, "rope_scaling.factor");
  edit(
      "kv heads", [](nlohmann::json* j) { (*j)["num_key_value_heads"] = 5; }, "num_key_value_heads");
  edit(
      "eos",
      [](nlohmann::json* j) {
        (*j)["eos_token_id"] = {128001, "x"};
      },
      "eos_token_id[1]");
  for (const Case& k : cases) {
    auto r = parse(k.j);
    ASSERT_FALSE(r.ok()) << k.what;
    EXPECT_TRUE(BadInput(r.status(), {path, k.key})) << k.what;
  }

  WriteBytes(path, "{\"hidden_size\": ");
  EXPECT_TRUE(BadInput(ParseHfConfig(path).status(), {path, "JSON"}));
  EXPECT_TRUE(BadInput(ParseHfConfig(Path("none.json")).status(), {Path("none.json")}));
}

}  // namespace
}  // namespace latam::ckpt
