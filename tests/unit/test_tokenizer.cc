// The tokenizer's building blocks: UTF-8 sanitising, the byte-level
// alphabet, and encoding/decoding with a small hand-written tokenizer.json
// whose expected ids are worked out by hand.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "data/bpe_trainer.h"
#include "data/tokenizer.h"
#include "data/utf8.h"

namespace latam::data {
namespace {

using Json = nlohmann::json;

TEST(Utf8Test, SanitizeReplacesMaximalInvalidSubparts) {
  EXPECT_EQ(SanitizeUtf8("plain ascii"), "plain ascii");
  EXPECT_EQ(SanitizeUtf8("ñandú 🙂"), "ñandú 🙂");
  const std::string r = "\xef\xbf\xbd";  // U+FFFD
  EXPECT_EQ(SanitizeUtf8("caf\xc3"), "caf" + r);
  EXPECT_EQ(SanitizeUtf8("\xe2\x82 x"), r + " x");             // truncated 3-byte sequence: one subpart
  EXPECT_EQ(SanitizeUtf8("\xf0\x9f\x98"), r);                  // truncated 4-byte sequence
  EXPECT_EQ(SanitizeUtf8("\xff\xfe"), r + r);                  // invalid lead bytes, one each
  EXPECT_EQ(SanitizeUtf8("\x80\x80ok"), r + r + "ok");         // stray continuations
  EXPECT_EQ(SanitizeUtf8("\xed\xa0\x80"), r + r + r);          // a UTF-16 surrogate is not UTF-8
  EXPECT_EQ(SanitizeUtf8("\xc0\xaf"), r + r);                  // overlong encoding
  EXPECT_EQ(SanitizeUtf8("\xf4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
  EXPECT_TRUE(IsValidUtf8(SanitizeUtf8("\xc3(\xa9\xe2\x28\xa1")));
}

TEST(Utf8Test, ByteLevelAlphabetIsAPrintableBijection) {
  std::set<uint32_t> chars;
  for (int b = 0; b < 256; ++b) {
    const uint32_t c = ByteToChar(static_cast<uint8_t>(b));
    chars.insert(c);
    ASSERT_EQ(CharToByte(c), static_cast<uint8_t>(b));
  }
  EXPECT_EQ(chars.size(), 256u);
  EXPECT_EQ(ByteToChar(' '), 0x120u);   // "Ġ"
  EXPECT_EQ(ByteToChar('\n'), 0x10au);  // "Ċ"
  EXPECT_EQ(ByteToChar('a'), static_cast<uint32_t>('a'));
  EXPECT_EQ(ByteToChar(0xe9), 0xe9u);  // printable Latin-1 maps to itself
  EXPECT_EQ(ByteLevelStrings()[' '], "\xc4\xa0");
  EXPECT_FALSE(CharToByte(0x4e00).has_value());
}

// A byte-level BPE with ids 0..255 for the bytes (in byte order) and a few
// merges: "l l" (rank 0), "h e" (1), "he ll" (2), "hell o" (3), "a a" (4).
Json TinyTokenizer(bool ignore_merges) {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteLevelStrings()[static_cast<size_t>(b)]] = b;
  vocab["ll"] = 256;
  vocab["he"] = 257;
  vocab["hell"] = 258;
  vocab["hello"] = 259;
  vocab["aa"] = 260;
  vocab["xyz"] = 261;  // in the vocabulary but unreachable by merges
  Json j;
  j["version"] = "1.0";
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       Json::array(
           {{{"type", "Split"},
             {"pattern", {{"Regex", R"([^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+(?!\S)|\s+)"}}},
             {"behavior", "Isolated"},
             {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  j["decoder"] = {{"type", "ByteLevel"}};
  j["model"] = {{"type", "BPE"},
                {"ignore_merges", ignore_merges},
                {"vocab", vocab},
                {"merges", Json::array({"l l", "h e", Json::array({"he", "ll"}), "hell o", "a a"})}};
  j["added_tokens"] =
      Json::array({{{"id", 300}, {"content", "<|eos|>"}, {"special", true}},
                   {{"id", 301}, {"content", "<|e"}, {"special", true}},
                   {{"id", 302}, {"content", "<pad>"}, {"special", true}, {"lstrip", true}, {"rstrip", true}}});
  return j;
}

std::unique_ptr<Tokenizer> Load(const Json& j) {
  auto t = Tokenizer::FromJson(j.dump(), "tiny.json");
  EXPECT_TRUE(t.ok()) << t.status().message();
  return t.ok() ? std::move(t).value() : nullptr;
}

using Ids = std::vector<uint32_t>;

TEST(TokenizerTest, MergesApplyLowestRankFirstAndLeftmostOnTies) {
  auto t = Load(TinyTokenizer(false));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->Encode("hello"), (Ids{259}));
  // " hello" is one pre-token; "Ġ" never merges.
  EXPECT_EQ(t->Encode(" hello"), (Ids{' ', 259}));  // byte ' ' has id 32
  EXPECT_EQ(t->Encode("hell"), (Ids{258}));
  EXPECT_EQ(t->Encode("helo"), (Ids{257, 'l', 'o'}));
  // "aaa": the two "a a" candidates have equal rank; the leftmost wins.
  EXPECT_EQ(t->Encode("aaa"), (Ids{260, 'a'}));
  EXPECT_EQ(t->Encode("aaaa"), (Ids{260, 260}));
  // Without ignore_merges, "xyz" is spelled out in bytes.
  EXPECT_EQ(t->Encode("xyz"), (Ids{'x', 'y', 'z'}));
  EXPECT_EQ(t->Encode(""), Ids{});
  EXPECT_EQ(t->vocab_size(), 303u);
}

TEST(TokenizerTest, IgnoreMergesTakesWholeVocabularyWords) {
  auto t = Load(TinyTokenizer(true));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->Encode("xyz"), (Ids{261}));
  EXPECT_EQ(t->Encode("xyzw"), (Ids{'x', 'y', 'z', 'w'}));
  EXPECT_EQ(t->Encode("hello"), (Ids{259}));
}

TEST(TokenizerTest, AddedTokensAreCutOutLeftmostLongestWithStrip) {
  auto t = Load(TinyTokenizer(false));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->Encode("aa<|eos|>aa"), (Ids{260, 300, 260}));
  // "<|e" and "<|eos|>" both start here: the longer one wins; "<|ex" takes the short one.
  EXPECT_EQ(t->Encode("<|ex"), (Ids{301, 'x'}));
  // <pad> strips the whitespace on both sides.
  EXPECT_EQ(t->Encode("aa  <pad> \n aa"), (Ids{260, 302, 260}));
  EXPECT_EQ(t->TokenId("<pad>"), 302u);
  EXPECT_EQ(t->TokenId("hello"), 259u);
  EXPECT_FALSE(t->TokenId("nope").has_value());
}

TEST(TokenizerTest, DecodeRoundTripsAndSanitizesInvalidInput) {
  auto t = Load(TinyTokenizer(false));
  ASSERT_NE(t, nullptr);
  for (const std::string& text :
       {std::string("hello world"), std::string("ñandú, coração\r\n\t 123456 🙂"), std::string("aa<|eos|>xyz")}) {
    EXPECT_EQ(t->Decode(t->Encode(text)), text);
  }
  const std::string invalid = "ok\xff\xc3";
  EXPECT_EQ(t->Decode(t->Encode(invalid)), SanitizeUtf8(invalid));
  // A lone continuation byte decodes to raw bytes, and to U+FFFD in Decode.
  const Ids partial{0xa9};
  EXPECT_EQ(t->DecodeBytes(partial), "\xa9");
  EXPECT_EQ(t->Decode(partial), "\xef\xbf\xbd");
}

TEST(TokenizerTest, UnsupportedOrBrokenFilesAreNamedErrors) {
  struct Case {
    std::function<void(Json&)> edit;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](Json& j) { j["model"]["type"] = "WordPiece"; }, "model.type: 'WordPiece' is not supported"},
      {[](Json& j) {
         j["normalizer"] = {{"type", "NFC"}};
       },
       "normalizer: type 'NFC' is not supported"},
      {[](Json& j) { j["model"]["vocab"].erase(ByteLevelStrings()[7]); }, "has no token for byte 7"},
      {[](Json& j) { j["model"]["merges"].push_back("x q"); }, "model.merges[5]: 'x q' refers to a token missing"},
      {[](Json& j) { j["model"]["merges"].push_back("abc"); }, "model.merges[5]: 'abc' is not two"},
      {[](Json& j) {
         j["pre_tokenizer"] = {{"type", "Whitespace"}};
       },
       "pre_tokenizer: type 'Whitespace'"},
      {[](Json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"; },
       "pre_tokenizer.Split.pattern"},
      {[](Json& j) { j["added_tokens"][0]["single_word"] = true; }, "single_word"},
      {[](Json& j) { j.erase("model"); }, "not a Hugging Face tokenizer.json"},
  };
  for (const Case& c : cases) {
    Json j = TinyTokenizer(false);
    c.edit(j);
    auto t = Tokenizer::FromJson(j.dump(), "bad.json");
    ASSERT_FALSE(t.ok()) << c.expected;
    EXPECT_EQ(t.status().exit_code(), 2);
    EXPECT_NE(t.status().message().find("bad.json"), std::string::npos) << t.status().message();
    EXPECT_NE(t.status().message().find(c.expected), std::string::npos) << t.status().message();
  }
  auto t = Tokenizer::FromJson("{not json", "broken.json");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("broken.json: not valid JSON"), std::string::npos);
  EXPECT_FALSE(Tokenizer::Load("/nonexistent/tokenizer.json").ok());
}

// Every id is checked before any table is sized by it: an integer in
// [0, 2^24), one text per id, and the largest below twice the token count.
TEST(TokenizerTest, TokenIdsAreCheckedAtLoad) {
  struct Case {
    std::function<void(Json&)> edit;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](Json& j) { j["model"]["vocab"]["xyz"] = -1; }, "model.vocab: token 'xyz' has id -1, outside [0, 16777216)"},
      {[](Json& j) { j["model"]["vocab"]["xyz"] = 1e8; }, "model.vocab: token 'xyz' has id 100000000.0, not an integer"},
      {[](Json& j) { j["model"]["vocab"]["xyz"] = 100000000; }, "token 'xyz' has id 100000000, outside"},
      {[](Json& j) { j["model"]["vocab"]["xyz"] = int64_t{1} << 31; }, "token 'xyz' has id 2147483648, outside"},
      {[](Json& j) { j["model"]["vocab"]["xyz"] = uint64_t{18446744073709551615u}; }, "has id 18446744073709551615"},
      {[](Json& j) { j["model"]["vocab"]["xyz"] = "261"; }, "token 'xyz' has id \"261\", not an integer"},
      {[](Json& j) { j["model"]["vocab"]["xyz"] = 65; }, "has id 65, already the id of"},
      {[](Json& j) { j["model"]["vocab"]["xyz"] = 600; }, "token id 600 (of 'xyz') is not below twice the number"},
      {[](Json& j) { j["added_tokens"][0]["id"] = -3; }, "added_tokens: token '<|eos|>' has id -3, outside"},
      {[](Json& j) { j["added_tokens"][1]["id"] = 300; }, "added_tokens: token '<|e' has id 300, already the id of"},
      {[](Json& j) { j["added_tokens"][0]["id"] = 97; }, "added_tokens: token '<|eos|>' has id 97, already the id of 'a'"},
  };
  for (const Case& c : cases) {
    Json j = TinyTokenizer(false);
    c.edit(j);
    auto t = Tokenizer::FromJson(j.dump(), "ids.json");
    ASSERT_FALSE(t.ok()) << c.expected;
    EXPECT_EQ(t.status().exit_code(), 2);
    EXPECT_NE(t.status().message().find("ids.json: "), std::string::npos) << t.status().message();
    EXPECT_NE(t.status().message().find(c.expected), std::string::npos) << t.status().message();
  }
  // Gaps are fine up to the bound (the tiny tokenizer has 262..299 unused),
  // and an added token may repeat its vocabulary entry, as GPT-2's
  // <|endoftext|> does.
  Json j = TinyTokenizer(false);
  j["model"]["vocab"]["<|eos|>"] = 300;
  j["model"]["vocab"]["xyz"] = 529;  // 265 distinct ids: the largest allowed
  auto t = Tokenizer::FromJson(j.dump(), "ok.json");
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ((*t)->vocab_size(), 530u);
  EXPECT_EQ((*t)->TokenId("<|eos|>"), std::optional<uint32_t>(300));
  EXPECT_EQ((*t)->Encode("a<|eos|>"), (Ids{'a', 300}));
}

TEST(TokenizerTest, PathsThatAreNotFilesAreNamed) {
  const auto dir = std::filesystem::temp_directory_path();
  auto t = Tokenizer::Load(dir.string());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().exit_code(), 2);
  EXPECT_NE(t.status().message().find(dir.string() + ": is a directory"), std::string::npos) << t.status().message();
  t = Tokenizer::Load((dir / std::string(300, 'n') / "tokenizer.json").string());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().exit_code(), 2);
  EXPECT_NE(t.status().message().find("File name too long"), std::string::npos) << t.status().message();
}

}  // namespace
}  // namespace latam::data

namespace latam::data {
namespace {

std::unique_ptr<Tokenizer> Train(const std::vector<std::string>& docs, int vocab, int64_t min_frequency,
                                 std::string* json_out = nullptr) {
  BpeTrainerOptions o;
  o.vocab_size = vocab;
  o.min_frequency = min_frequency;
  auto trainer = BpeTrainer::Create(o);
  EXPECT_TRUE(trainer.ok()) << trainer.status().message();
  (*trainer)->AddDocuments(docs);
  auto json = (*trainer)->Train();
  EXPECT_TRUE(json.ok()) << json.status().message();
  if (json_out != nullptr) *json_out = *json;
  auto t = Tokenizer::FromJson(*json, "trained.json");
  EXPECT_TRUE(t.ok()) << t.status().message();
  return t.ok() ? std::move(t).value() : nullptr;
}

TEST(BpeTrainerTest, LearnsTheMostFrequentPairsFirst) {
  // Pre-tokens: "hug" x10, " hug" x9, " pug" x5, " pun" x12, " bun" x4.
  std::string doc = "hug";
  for (int i = 0; i < 9; ++i) doc += " hug";
  for (int i = 0; i < 5; ++i) doc += " pug";
  for (int i = 0; i < 12; ++i) doc += " pun";
  for (int i = 0; i < 4; ++i) doc += " bun";
  std::vector<std::string> docs(10, "hug");
  docs.push_back(doc.substr(3));  // everything after the first "hug"
  std::string json;
  auto t = Train(docs, 256 + 3 + 5, 1, &json);  // 3 merges, Llama 3's 5 special tokens
  ASSERT_NE(t, nullptr);
  const auto j = Json::parse(json);
  // Pair counts: "u g" 10+9+5 = 24, "u n" 12+4 = 16, "Ġ p" 17, "h u" 19 ... "u g" goes first.
  ASSERT_EQ(j["model"]["merges"].size(), 3u);
  EXPECT_EQ(j["model"]["merges"][0], "u g");
  // Then "h ug" (19) and "Ġ p" (17).
  EXPECT_EQ(j["model"]["merges"][1], "h ug");
  EXPECT_EQ(j["model"]["merges"][2], "Ġ p");
  EXPECT_EQ(t->vocab_size(), 264u);
  EXPECT_EQ(t->TokenId("<|begin_of_text|>"), 259u);
  EXPECT_EQ(t->TokenId("<|end_of_text|>"), 260u);
  EXPECT_EQ(t->TokenId("<|start_header_id|>"), 261u);
  EXPECT_EQ(t->TokenId("<|end_header_id|>"), 262u);
  EXPECT_EQ(t->TokenId("<|eot_id|>"), 263u);
  EXPECT_EQ(t->Encode("hug"), (std::vector<uint32_t>{257}));
}

TEST(BpeTrainerTest, DeterministicRoundTripAndMinFrequency) {
  std::vector<std::string> docs;
  for (int i = 0; i < 200; ++i) {
    docs.push_back("El niño comió una piña en la montaña número " + std::to_string(i) +
                   ". A ação do coração não é vã; ñandú, pingüino. Llapa runakunam qispisqa paqarimunku.");
  }
  std::string a, b;
  auto t = Train(docs, 320, 2, &a);
  Train(docs, 320, 2, &b);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(a, b) << "training must be deterministic";
  EXPECT_EQ(t->vocab_size(), 320u);
  for (const std::string& text : {docs[17], std::string("texto nuevo nunca visto: 日本語 🙂\r\n\t x"),
                                  std::string("\xff\xfe broken \xc3")}) {
    EXPECT_EQ(t->Decode(t->Encode(text)), SanitizeUtf8(text));
  }
  // A frequent short word became a single token.
  EXPECT_EQ(t->Encode(" la").size(), 1u);
  // A high min_frequency stops training before the vocabulary is full.
  auto small = Train(docs, 4000, 150);
  ASSERT_NE(small, nullptr);
  EXPECT_LT(small->vocab_size(), 4000u);
  EXPECT_GT(small->vocab_size(), 258u);
}

TEST(BpeTrainerTest, BadOptionsAreInputErrors) {
  BpeTrainerOptions o;
  o.vocab_size = 100;
  EXPECT_FALSE(BpeTrainer::Create(o).ok());
  o.vocab_size = 1000;
  o.special_tokens = {"<a>", "<a>"};
  EXPECT_FALSE(BpeTrainer::Create(o).ok());
  o.special_tokens = {"<a>"};
  o.pattern = "(unclosed";
  const auto r = BpeTrainer::Create(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().exit_code(), 2);
}

}  // namespace
}  // namespace latam::data
