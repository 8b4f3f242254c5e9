// latam-eval's scoring: benchmark tasks read from a JSON-lines file, turned
// into token sequences, scored by a causal language model, summarised per
// task.
//
// Task file. One JSON object per line (blank lines are skipped; fields other
// than those below are ignored):
//   {"task": NAME, "text": T}                                   perplexity
//   {"task": NAME, "context": C, "choices": [X0, X1, ...], "answer": I}
//                                                               multiple choice
// A task is every line with the same NAME; its lines must all be of one kind.
// Bad input names "FILE:LINE": malformed JSON, a missing or mistyped field, a
// line with both "text" and "context", an empty text or choice, no choices,
// an answer outside [0, choices), a task mixing kinds, a text of fewer than 2
// tokens, a choice whose tokens alone exceed the model's context.
//
// Tokens. Every sequence starts with the tokenizer's begin token (prefix):
// <|begin_of_text|> when the tokenizer has it, else <|end_of_text|> (the
// token that precedes each document in packed training shards), else none.
// With a prefix every token of a text is predicted; without one the first
// token is context only.
//
// Perplexity. The text's tokens t_1..t_N follow the prefix t_0. The
// predicted tokens are cut into non-overlapping windows of at most
// L = max_seq_len tokens: window w predicts t_a..t_b (b - a < L) from the
// inputs t_{a-1}..t_{b-1}, so only the first window sees the prefix and each
// later one starts from the last token of the previous window with no
// further history (lm-evaluation-harness's rolling log-likelihood with a
// context of one token). perplexity = exp(sum NLL / predicted tokens) over
// all of the task's texts; `tokens` is that count.
//
// Multiple choice, as lm-evaluation-harness scores a (context, continuation)
// pair for a decoder-only model: trailing whitespace of the context moves to
// the front of the continuation (so "Q:" + " A" and "Q: " + "A" score alike);
// ctx = encode(context), whole = encode(context + continuation), and the
// continuation's tokens are whole[len(ctx):]. The scored sequence is
// prefix + ctx + continuation tokens, cut from the left to its last L + 1
// tokens when longer. A choice's log-likelihood LL is the sum of
// log p(token | everything before it) over its continuation tokens.
// accuracy = share of items whose argmax_i LL_i is the answer;
// accuracy_norm = the same with LL_i / bytes(choice_i), the choice's length
// in UTF-8 bytes as written in the file (lm-evaluation-harness's acc_norm
// divides by the length in characters; for ASCII text the two agree). Ties:
// the lowest index wins.
//
// The model computes each sequence's summed NLL (SequenceScorer); the rest of
// this file is plain arithmetic, testable without a model.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"
#include "data/tokenizer.h"
#include "model/model.h"
#include "trainer/load_model.h"

namespace latam {

enum class EvalKind { kPerplexity, kMultipleChoice };

struct EvalItem {
  int64_t line = 0;  // 1-based line of the task file
  size_t task = 0;   // index into EvalTasks::tasks
  std::string text;  // perplexity
  std::string context;  // multiple choice
  std::vector<std::string> choices;
  int64_t answer = 0;
};

struct EvalTask {
  std::string name;
  EvalKind kind = EvalKind::kPerplexity;
  std::vector<size_t> items;  // indices into EvalTasks::items, in file order
};

struct EvalTasks {
  std::string path;
  std::vector<EvalTask> tasks;  // in order of first appearance
  std::vector<EvalItem> items;  // in file order
};

// `contents` is the file's text; `path` names it in errors.
Result<EvalTasks> ParseEvalTasks(const std::string& path, std::string_view contents);
// Reads `path` (missing, a directory, unreadable: bad input).
Result<EvalTasks> ReadEvalTasks(const std::string& path);

// lm-evaluation-harness's split of a pair: the context's trailing whitespace
// moved to the front of the continuation.
std::pair<std::string, std::string> MoveTrailingSpace(const std::string& context, const std::string& continuation);

// A sequence to score: the summed NLL of tokens[k] for every k >= first_target
// (first_target >= 1), each predicted from tokens[0..k).
struct ScoredSpan {
  std::vector<int32_t> tokens;
  int64_t first_target = 1;
  int64_t predicted() const { return static_cast<int64_t>(tokens.size()) - first_target; }
};

// What one item needs scored: a perplexity text's windows, or one span per
// choice (span i is choice i).
struct ItemSpans {
  std::vector<ScoredSpan> spans;
};

// The begin token described above, or none.
std::optional<int32_t> EvalPrefixToken(const data::Tokenizer& tokenizer);

// Every item's spans for a model of context `max_seq_len`; token-dependent
// errors name FILE:LINE.
Result<std::vector<ItemSpans>> BuildItemSpans(const EvalTasks& tasks, const data::Tokenizer& tokenizer,
                                              std::optional<int32_t> prefix, int64_t max_seq_len);

// Scores one span: its summed NLL in nats.
class SequenceScorer {
 public:
  virtual ~SequenceScorer() = default;
  virtual double SumNll(const ScoredSpan& span) = 0;
};

// An item's values, the unit that ranks exchange: for perplexity {sum NLL,
// predicted tokens}; for multiple choice one summed NLL per choice. From the
// summed NLL of each of the item's spans (span_nll[k] for spans.spans[k]).
std::vector<double> ItemValues(const EvalItem& item, EvalKind kind, const ItemSpans& spans,
                               const std::vector<double>& span_nll);
// The same, scoring the spans with `scorer`.
std::vector<double> ScoreItem(const EvalItem& item, EvalKind kind, const ItemSpans& spans, SequenceScorer& scorer);
// How many values ScoreItem gives for `item`.
size_t ItemValueCount(const EvalItem& item, EvalKind kind);

// The chosen index of an item from per-choice log-likelihoods: argmax, ties
// to the lowest index.
size_t ArgmaxChoice(const std::vector<double>& log_likelihoods);
// The same after dividing LL_i by the UTF-8 byte length of choice i.
size_t ArgmaxChoiceNormalized(const std::vector<double>& log_likelihoods, const std::vector<std::string>& choices);

struct TaskResult {
  std::string name;
  EvalKind kind = EvalKind::kPerplexity;
  int64_t n = 0;  // items
  double perplexity = 0.0;
  int64_t tokens = 0;
  double accuracy = 0.0, accuracy_norm = 0.0;
};

// Per task, in task order, from every item's values (values[i] for item i,
// as ScoreItem gives them); sums run in item order.
std::vector<TaskResult> SummarizeTasks(const EvalTasks& tasks, const std::vector<std::vector<double>>& values);
// {"task":..,"n":..,"perplexity":..,"tokens":..} or
// {"task":..,"n":..,"accuracy":..,"accuracy_norm":..}, one line, no newline.
std::string TaskResultJson(const TaskResult& result);

// What latam-eval loads: the checkpoint's whole model (LoadModel) and its
// tokenizer (`tokenizer` overrides the one saved with the checkpoint). This
// is the one place the scored weights come from: anything that changes them
// before scoring (an adapter, say) belongs in EvalModelOptions and here.
struct EvalModelOptions {
  std::string checkpoint;
  std::string tokenizer;
};
struct EvalModel {
  LoadedModel model;
  std::unique_ptr<data::Tokenizer> tokenizer;
  std::string tokenizer_path;
};
// Bad input (exit 2) for an unreadable checkpoint, a missing tokenizer or one
// larger than the model's vocabulary.
Result<EvalModel> LoadEvalModel(const EvalModelOptions& options);

// Scores spans with the training model (LlamaModel, the same forward pass
// and fused cross-entropy latam-train runs) on the CPU in fp32, one sequence
// per pass: the model's loss is one sum over its micro-batch, so separate
// sums per choice need one sequence per micro-batch. Sequences are padded
// to `seq_len` rows (pad inputs are token 0 and their targets are ignored;
// causal attention keeps them from the real rows). Copies the weights from
// `params`.
class ModelScorer : public SequenceScorer {
 public:
  ModelScorer(const ModelShape& shape, const ParameterSet& params, int64_t seq_len);
  double SumNll(const ScoredSpan& span) override;
  int64_t seq_len() const { return seq_len_; }

 private:
  int64_t seq_len_;
  LlamaModel model_;
  std::vector<int32_t> inputs_, targets_;
};

// The rows a span of `inputs` model inputs (tokens - 1) is padded to: the
// smallest power of two >= inputs, at least 16, at most max_seq_len. A
// span's padded length, and so its score, depends on the span alone.
int64_t PaddedRows(int64_t inputs, int64_t max_seq_len);

// The summed NLL of every span, with a ModelScorer per padded length
// (PaddedRows), built one after the other in increasing length so that one
// copy of the weights exists besides `params` at a time.
std::vector<double> ScoreSpans(const ModelShape& shape, const ParameterSet& params,
                               const std::vector<const ScoredSpan*>& spans);

}  // namespace latam
