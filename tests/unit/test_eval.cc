// latam-eval's scoring (trainer/eval.h): the summed NLL of the training
// model's forward pass against full logits and a double log-softmax, the
// task file's parsing and errors, the windows and the lm-evaluation-harness
// split of a pair, and the multiple-choice arithmetic with a scorer whose
// answers are known.
#include "trainer/eval.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "data/bpe_trainer.h"
#include "model/generate.h"
#include "model/layout.h"
#include "tests/test_util.h"

namespace latam {
namespace {

// -log softmax(row)[target] in double, over the full row.
double FullLogitsNll(const float* row, int64_t vocab, int32_t target) {
  double mx = row[0];
  for (int64_t v = 1; v < vocab; ++v) mx = std::max(mx, static_cast<double>(row[v]));
  double sum = 0.0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
  return mx + std::log(sum) - static_cast<double>(row[target]);
}

class EvalScoring : public testing::RandomTest {};

// The scorer's NLL of a span equals the sum, over its predicted tokens, of
// -log softmax of the full logits that the model's forward pass (the
// generator, with no cache reuse) gives, computed in double. Both run the
// same fp32 weights through different kernels (training attention and
// fused cross-entropy vs decode attention and the full logits), so they
// agree to float rounding: |difference| <= 2e-5 nats per predicted token.
TEST_F(EvalScoring, SumNllMatchesFullLogitsLogSoftmax) {
  const ModelShape shape = testing::SmallShape({.vocab = 61,
                                                .n_layers = 2,
                                                .n_heads = 4,
                                                .n_kv_heads = 2,
                                                .head_dim = 8,
                                                .ffn_dim = 40,
                                                .max_seq_len = 24,
                                                .init_std = 0.3});
  ParameterSet params(LlamaParameterSpecs(shape, ModelLayout::Single(shape)));
  params.InitWeights(seed_);
  ModelScorer scorer(shape, params, 20);
  Generator generator(shape, params, shape.max_seq_len);
  std::vector<ScoredSpan> spans;
  std::vector<double> expected_nll;
  for (const auto& [length, first] : std::vector<std::pair<int, int>>{{21, 1}, {12, 5}, {2, 1}, {17, 16}, {25, 3}}) {
    ScoredSpan span{RandomIds(static_cast<size_t>(length), shape.vocab), first};
    generator.Reset();
    const std::vector<int32_t> inputs(span.tokens.begin(), span.tokens.end() - 1);
    auto logits = generator.FeedAllLogits(inputs);
    ASSERT_TRUE(logits.ok()) << logits.status().message();
    double expected = 0.0;
    for (int64_t k = first; k < length; ++k) {
      expected += FullLogitsNll(logits->data() + (k - 1) * shape.vocab, shape.vocab, span.tokens[static_cast<size_t>(k)]);
    }
    spans.push_back(span);
    expected_nll.push_back(expected);
    // Not vacuous: a random model's NLL is near log(vocab) per token.
    EXPECT_GT(expected, 0.5 * std::log(61.0) * static_cast<double>(span.predicted()));
    if (length - 1 > scorer.seq_len()) continue;
    const double got = scorer.SumNll(span);
    EXPECT_NEAR(got, expected, 2e-5 * static_cast<double>(span.predicted())) << "length " << length << " first " << first;
    // The same span scores the same each time.
    EXPECT_EQ(scorer.SumNll(span), got);
  }
  // Grouped by padded length (16 rows for the short spans, 24 = max_seq_len
  // for the longest), every span still matches.
  EXPECT_EQ(PaddedRows(1, 24), 16);
  EXPECT_EQ(PaddedRows(16, 24), 16);
  EXPECT_EQ(PaddedRows(17, 24), 24);
  EXPECT_EQ(PaddedRows(33, 64), 64);
  std::vector<const ScoredSpan*> pointers;
  for (const ScoredSpan& s : spans) pointers.push_back(&s);
  const std::vector<double> grouped = ScoreSpans(shape, params, pointers);
  ASSERT_EQ(grouped.size(), spans.size());
  for (size_t i = 0; i < spans.size(); ++i) {
    EXPECT_NEAR(grouped[i], expected_nll[i], 2e-5 * static_cast<double>(spans[i].predicted())) << "span " << i;
  }
}

// A scorer that knows the answer: each predicted token costs cost[token].
class TableScorer : public SequenceScorer {
 public:
  explicit TableScorer(std::map<int32_t, double> cost) : cost_(std::move(cost)) {}
  double SumNll(const ScoredSpan& span) override {
    double sum = 0.0;
    for (size_t k = static_cast<size_t>(span.first_target); k < span.tokens.size(); ++k) sum += cost_.at(span.tokens[k]);
    ++calls;
    return sum;
  }
  int calls = 0;

 private:
  std::map<int32_t, double> cost_;
};

EvalTasks Parse(const std::string& text) {
  auto t = ParseEvalTasks("tasks.jsonl", text);
  EXPECT_TRUE(t.ok()) << t.status().message();
  return t.ok() ? std::move(t).value() : EvalTasks{};
}

TEST(EvalTasksFile, TasksInOrderOfFirstAppearance) {
  const EvalTasks t = Parse(
      "{\"task\": \"b\", \"text\": \"uno dos\"}\n"
      "\n"
      "{\"task\": \"a\", \"context\": \"x\", \"choices\": [\" y\", \" z\"], \"answer\": 1, \"id\": 7}\n"
      "{\"task\": \"b\", \"text\": \"tres\"}\r\n");
  ASSERT_EQ(t.tasks.size(), 2u);
  EXPECT_EQ(t.tasks[0].name, "b");
  EXPECT_EQ(t.tasks[0].kind, EvalKind::kPerplexity);
  EXPECT_EQ(t.tasks[0].items, (std::vector<size_t>{0, 2}));
  EXPECT_EQ(t.tasks[1].name, "a");
  EXPECT_EQ(t.tasks[1].kind, EvalKind::kMultipleChoice);
  ASSERT_EQ(t.items.size(), 3u);
  EXPECT_EQ(t.items[1].line, 3);
  EXPECT_EQ(t.items[1].answer, 1);
  EXPECT_EQ(t.items[2].line, 4);
  EXPECT_EQ(t.items[2].text, "tres");
}

TEST(EvalTasksFile, BadLinesNameFileAndLine) {
  const std::string ok = "{\"task\": \"t\", \"text\": \"hola mundo\"}\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"task\": \"t\", \"text\": \"x\"", "tasks.jsonl:2: malformed JSON"},
      {"[1, 2]", "tasks.jsonl:2: expected a JSON object"},
      {"{\"text\": \"x\"}", "tasks.jsonl:2: missing field \"task\""},
      {"{\"task\": 3, \"text\": \"x\"}", "tasks.jsonl:2: field \"task\" must be a string"},
      {"{\"task\": \"t\"}", "tasks.jsonl:2: needs \"text\""},
      {"{\"task\": \"t\", \"text\": \"\"}", "tasks.jsonl:2: field \"text\" is empty"},
      {"{\"task\": \"u\", \"context\": \"c\", \"choices\": [], \"answer\": 0}",
       "tasks.jsonl:2: field \"choices\" is empty"},
      {"{\"task\": \"u\", \"context\": \"c\", \"choices\": [\"a\", \"\"], \"answer\": 0}",
       "tasks.jsonl:2: choices[1] is empty"},
      {"{\"task\": \"u\", \"context\": \"c\", \"choices\": [\"a\"], \"answer\": 1}",
       "tasks.jsonl:2: answer 1 is outside [0, 1)"},
      {"{\"task\": \"u\", \"context\": \"c\", \"choices\": [\"a\"], \"answer\": -1}",
       "tasks.jsonl:2: answer -1 is outside"},
      {"{\"task\": \"u\", \"context\": \"c\", \"choices\": [\"a\"], \"answer\": 0.5}",
       "tasks.jsonl:2: field \"answer\" must be an integer"},
      {"{\"task\": \"u\", \"context\": \"c\", \"choices\": [\"a\"]}", "tasks.jsonl:2: missing field \"answer\""},
      {"{\"task\": \"t\", \"context\": \"c\", \"choices\": [\"a\"], \"answer\": 0}",
       "tasks.jsonl:2: task \"t\" mixes kinds: this line is multiple-choice, line 1 made it perplexity"},
      {"{\"task\": \"t\", \"text\": \"a\", \"context\": \"c\"}", "tasks.jsonl:2: has both"},
  };
  for (const auto& [line, message] : cases) {
    auto t = ParseEvalTasks("tasks.jsonl", ok + line + "\n");
    ASSERT_FALSE(t.ok()) << line;
    EXPECT_EQ(t.status().code(), StatusCode::kInvalidInput) << line;
    EXPECT_NE(t.status().message().find(message), std::string::npos) << t.status().message();
  }
  EXPECT_FALSE(ParseEvalTasks("empty.jsonl", "\n\n").ok());
}

TEST(EvalTasksFile, TrailingSpaceMovesToTheContinuation) {
  EXPECT_EQ(MoveTrailingSpace("Pregunta: ", "sí"), (std::pair<std::string, std::string>{"Pregunta:", " sí"}));
  EXPECT_EQ(MoveTrailingSpace("a \n", "b"), (std::pair<std::string, std::string>{"a", " \nb"}));
  EXPECT_EQ(MoveTrailingSpace("a", " b"), (std::pair<std::string, std::string>{"a", " b"}));
  EXPECT_EQ(MoveTrailingSpace("", "b"), (std::pair<std::string, std::string>{"", "b"}));
}

std::unique_ptr<data::Tokenizer> TrainedTokenizer() {
  data::BpeTrainerOptions options;
  options.vocab_size = 300;
  auto trainer = data::BpeTrainer::Create(options);
  EXPECT_TRUE(trainer.ok());
  (*trainer)->AddDocuments({"la casa es grande y la casa es bonita", "el perro come en la casa grande"});
  auto json = (*trainer)->Train();
  EXPECT_TRUE(json.ok());
  auto tok = data::Tokenizer::FromJson(*json, "test tokenizer");
  EXPECT_TRUE(tok.ok()) << tok.status().message();
  return std::move(tok).value();
}

std::vector<int32_t> Encode(const data::Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> out;
  for (uint32_t id : tok.Encode(text)) out.push_back(static_cast<int32_t>(id));
  return out;
}

TEST(EvalSpans, PerplexityWindowsCoverEveryTokenOnce) {
  const auto tok = TrainedTokenizer();
  const std::string text = "la casa es grande y el perro come en la casa bonita y grande";
  const EvalTasks t = Parse("{\"task\": \"p\", \"text\": \"" + text + "\"}\n");
  const std::vector<int32_t> ids = Encode(*tok, text);
  const int32_t bos = static_cast<int32_t>(*tok->TokenId("<|begin_of_text|>"));
  ASSERT_EQ(EvalPrefixToken(*tok), bos);
  ASSERT_GT(ids.size(), 8u);
  for (int64_t window : {4, 5, 1000}) {
    auto spans = BuildItemSpans(t, *tok, bos, window);
    ASSERT_TRUE(spans.ok()) << spans.status().message();
    // The windows, chained, are BOS + ids; each predicts all but its first
    // token, at most `window` of them.
    std::vector<int32_t> joined = {bos};
    int64_t predicted = 0;
    for (const ScoredSpan& s : (*spans)[0].spans) {
      EXPECT_EQ(s.first_target, 1);
      EXPECT_LE(s.predicted(), window);
      EXPECT_EQ(s.tokens.front(), joined.back());
      joined.insert(joined.end(), s.tokens.begin() + 1, s.tokens.end());
      predicted += s.predicted();
    }
    std::vector<int32_t> expected = {bos};
    expected.insert(expected.end(), ids.begin(), ids.end());
    EXPECT_EQ(joined, expected);
    EXPECT_EQ(predicted, static_cast<int64_t>(ids.size()));
  }
  // Without a prefix the first token is context only.
  auto spans = BuildItemSpans(t, *tok, std::nullopt, 1000);
  ASSERT_TRUE(spans.ok());
  EXPECT_EQ((*spans)[0].spans[0].tokens, ids);
  EXPECT_EQ((*spans)[0].spans[0].predicted(), static_cast<int64_t>(ids.size()) - 1);
}

TEST(EvalSpans, ChoicesAreTheContinuationTokensAfterTheContext) {
  const auto tok = TrainedTokenizer();
  const std::string context = "el perro come en la casa grande y la casa es";
  const EvalTasks t = Parse("{\"task\": \"m\", \"context\": \"" + context +
                            " \", \"choices\": [\"grande\", \"bonita y grande\"], \"answer\": 0}\n");
  const int32_t bos = static_cast<int32_t>(*tok->TokenId("<|begin_of_text|>"));
  auto spans = BuildItemSpans(t, *tok, bos, 64);
  ASSERT_TRUE(spans.ok()) << spans.status().message();
  ASSERT_EQ((*spans)[0].spans.size(), 2u);
  const std::vector<int32_t> ctx = Encode(*tok, context);
  for (size_t c = 0; c < 2; ++c) {
    const ScoredSpan& s = (*spans)[0].spans[c];
    const std::string choice = c == 0 ? " grande" : " bonita y grande";
    std::vector<int32_t> expected = {bos};
    expected.insert(expected.end(), ctx.begin(), ctx.end());
    const std::vector<int32_t> whole = Encode(*tok, context + choice);
    expected.insert(expected.end(), whole.begin() + static_cast<std::ptrdiff_t>(ctx.size()), whole.end());
    EXPECT_EQ(s.tokens, expected);
    EXPECT_EQ(s.first_target, static_cast<int64_t>(ctx.size()) + 1);
  }
  // A long context is cut from the left to max_seq_len + 1 tokens: with the
  // longest continuation's length as the context, the short choice keeps
  // only the last tokens of its context.
  const int64_t cont0 = (*spans)[0].spans[0].predicted(), cont1 = (*spans)[0].spans[1].predicted();
  const int64_t window = std::max(cont0, cont1);
  ASSERT_LT(window + 1, static_cast<int64_t>((*spans)[0].spans[0].tokens.size()));
  auto cut = BuildItemSpans(t, *tok, bos, window);
  ASSERT_TRUE(cut.ok()) << cut.status().message();
  const ScoredSpan& s0 = (*cut)[0].spans[0];
  EXPECT_EQ(static_cast<int64_t>(s0.tokens.size()), window + 1);
  EXPECT_EQ(s0.predicted(), cont0);
  const std::vector<int32_t>& full0 = (*spans)[0].spans[0].tokens;
  EXPECT_EQ(s0.tokens, std::vector<int32_t>(full0.end() - (window + 1), full0.end()));
  // Too short a text, and a choice longer than the context.
  auto short_text = BuildItemSpans(Parse("{\"task\": \"p\", \"text\": \"l\"}\n"), *tok, bos, 64);
  ASSERT_FALSE(short_text.ok());
  EXPECT_NE(short_text.status().message().find("tasks.jsonl:1: text tokenizes to 1 token(s)"), std::string::npos)
      << short_text.status().message();
  auto long_choice = BuildItemSpans(t, *tok, bos, window - 1);
  ASSERT_FALSE(long_choice.ok());
  EXPECT_NE(long_choice.status().message().find("tasks.jsonl:1: choices[1] is"), std::string::npos)
      << long_choice.status().message();
}

// Multiple choice with known per-token costs: accuracy counts the argmax of
// the summed log-likelihood, accuracy_norm the argmax per UTF-8 byte, and a
// tie goes to the lower index.
TEST(EvalMultipleChoice, AccuracyAndNormalizedAccuracyFromKnownScores) {
  const EvalTasks t = Parse(
      // Item 0: one cheap short choice vs a longer one that is cheaper per
      // byte; the answer is the long one: acc misses, acc_norm hits.
      "{\"task\": \"m\", \"context\": \"q\", \"choices\": [\" ab\", \" abcdefgh\"], \"answer\": 1}\n"
      // Item 1: a tie between choices 0 and 2, answer 0: both hit.
      "{\"task\": \"m\", \"context\": \"q\", \"choices\": [\" x\", \" y\", \" x\"], \"answer\": 0}\n"
      // Item 2: the same tie, answer 2: both miss.
      "{\"task\": \"m\", \"context\": \"q\", \"choices\": [\" x\", \" y\", \" x\"], \"answer\": 2}\n"
      // Item 3: a plain win for choice 1.
      "{\"task\": \"m\", \"context\": \"q\", \"choices\": [\" y\", \" x\"], \"answer\": 1}\n"
      "{\"task\": \"p\", \"text\": \"ignored\"}\n");
  // Spans built by hand: token 1 is the context, choice tokens as named.
  // Costs: 10 ("ab", 3 bytes) 4 nats; 11 ("abcdefgh", 9 bytes) 6 nats; 12 (x) 1;
  // 13 (y) 2; the text's tokens 20 and 21 cost 0.5 and 1.5.
  TableScorer scorer({{10, 4.0}, {11, 6.0}, {12, 1.0}, {13, 2.0}, {20, 0.5}, {21, 1.5}});
  const std::vector<std::vector<int32_t>> choice_tokens[] = {
      {{10}, {11}}, {{12}, {13}, {12}}, {{12}, {13}, {12}}, {{13}, {12}}};
  std::vector<std::vector<double>> values;
  for (size_t i = 0; i < 4; ++i) {
    ItemSpans spans;
    for (const auto& c : choice_tokens[i]) {
      std::vector<int32_t> tokens = {1};
      tokens.insert(tokens.end(), c.begin(), c.end());
      spans.spans.push_back(ScoredSpan{tokens, 1});
    }
    values.push_back(ScoreItem(t.items[i], EvalKind::kMultipleChoice, spans, scorer));
    EXPECT_EQ(values.back().size(), ItemValueCount(t.items[i], EvalKind::kMultipleChoice));
  }
  EXPECT_EQ(values[0], (std::vector<double>{4.0, 6.0}));
  // The perplexity item: two windows predicting 20 21 | 21.
  ItemSpans text;
  text.spans = {ScoredSpan{{1, 20, 21}, 1}, ScoredSpan{{21, 21}, 1}};
  values.push_back(ScoreItem(t.items[4], EvalKind::kPerplexity, text, scorer));
  EXPECT_EQ(values.back(), (std::vector<double>{3.5, 3.0}));

  const std::vector<TaskResult> r = SummarizeTasks(t, values);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].n, 4);
  EXPECT_DOUBLE_EQ(r[0].accuracy, 2.0 / 4.0);       // items 1, 3
  EXPECT_DOUBLE_EQ(r[0].accuracy_norm, 3.0 / 4.0);  // items 0, 1, 3
  EXPECT_NE(r[0].accuracy, r[0].accuracy_norm);
  EXPECT_EQ(r[1].tokens, 3);
  EXPECT_DOUBLE_EQ(r[1].perplexity, std::exp(3.5 / 3.0));
  EXPECT_EQ(TaskResultJson(r[0]), "{\"task\":\"m\",\"n\":4,\"accuracy\":0.5,\"accuracy_norm\":0.75}");
  EXPECT_EQ(TaskResultJson(r[1]).rfind("{\"task\":\"p\",\"n\":1,\"perplexity\":", 0), 0u) << TaskResultJson(r[1]);

  EXPECT_EQ(ArgmaxChoice({-3.0, -1.0, -1.0}), 1u);
  EXPECT_EQ(ArgmaxChoiceNormalized({-4.0, -6.0}, {" ab", " abcdefgh"}), 1u);
  // Bytes, not characters: " ñ" is 3 bytes (2 characters), so -1.7 / 3 beats
  // -1.2 / 2 where per character it would not; -2 / 3 does not.
  EXPECT_EQ(ArgmaxChoiceNormalized({-1.7, -1.2}, {" ñ", " n"}), 0u);
  EXPECT_EQ(ArgmaxChoiceNormalized({-2.0, -1.2}, {" ñ", " n"}), 1u);
}

}  // namespace
}  // namespace latam
