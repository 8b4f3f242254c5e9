#include "trainer/eval.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "model/layout.h"

namespace latam {
namespace {

using Json = nlohmann::json;

std::string At(const std::string& path, int64_t line) {
  return std::string(path).append(":").append(std::to_string(line)).append(": ");
}

const char* KindName(EvalKind kind) { return kind == EvalKind::kPerplexity ? "perplexity" : "multiple-choice"; }

// The string field `key` of `j`.
Result<std::string> StringField(const Json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end()) return Status::InvalidInput(where + "missing field \"" + key + "\"");
  if (!it->is_string()) return Status::InvalidInput(where + "field \"" + key + "\" must be a string");
  return it->get<std::string>();
}

// One line's item, its task's name and its kind.
Result<EvalItem> ParseLine(const std::string& line, const std::string& where, std::string* name, EvalKind* kind) {
  Json j;
  try {
    j = Json::parse(line);
  } catch (const Json::parse_error& e) {
    // The library's text after its own "line 1, column N: " (the file's line
    // is already named).
    const std::string what = e.what();
    const size_t column = what.find("column ");
    const size_t text = column == std::string::npos ? std::string::npos : what.find(": ", column);
    return Status::InvalidInput(where + "malformed JSON at byte " + std::to_string(e.byte) + ": " +
                                (text == std::string::npos ? what : what.substr(text + 2)));
  }
  if (!j.is_object()) return Status::InvalidInput(where + "expected a JSON object");
  EvalItem item;
  LATAM_ASSIGN_OR_RETURN(*name, StringField(j, "task", where));
  if (name->empty()) return Status::InvalidInput(where + "field \"task\" is empty");
  const bool has_text = j.contains("text"), has_context = j.contains("context");
  if (has_text && has_context) {
    return Status::InvalidInput(where + "has both \"text\" (perplexity) and \"context\" (multiple choice)");
  }
  if (!has_text && !has_context) {
    return Status::InvalidInput(where + "needs \"text\" (perplexity) or \"context\", \"choices\" and \"answer\" "
                                "(multiple choice)");
  }
  if (has_text) {
    *kind = EvalKind::kPerplexity;
    LATAM_ASSIGN_OR_RETURN(item.text, StringField(j, "text", where));
    if (item.text.empty()) return Status::InvalidInput(where + "field \"text\" is empty");
  } else {
    *kind = EvalKind::kMultipleChoice;
    LATAM_ASSIGN_OR_RETURN(item.context, StringField(j, "context", where));
    const auto choices = j.find("choices");
    if (choices == j.end()) return Status::InvalidInput(where + "missing field \"choices\"");
    if (!choices->is_array()) return Status::InvalidInput(where + "field \"choices\" must be an array of strings");
    if (choices->empty()) return Status::InvalidInput(where + "field \"choices\" is empty");
    for (size_t i = 0; i < choices->size(); ++i) {
      const Json& c = (*choices)[i];
      const std::string which = std::string("choices[").append(std::to_string(i)).append("]");
      if (!c.is_string()) return Status::InvalidInput(where + which + " must be a string");
      if (c.get_ref<const std::string&>().empty()) return Status::InvalidInput(where + which + " is empty");
      item.choices.push_back(c.get<std::string>());
    }
    const auto answer = j.find("answer");
    if (answer == j.end()) return Status::InvalidInput(where + "missing field \"answer\"");
    if (!answer->is_number_integer()) return Status::InvalidInput(where + "field \"answer\" must be an integer");
    const int64_t n = static_cast<int64_t>(item.choices.size());
    const bool negative = answer->is_number_unsigned() ? false : answer->get<int64_t>() < 0;
    if (negative || answer->get<uint64_t>() >= static_cast<uint64_t>(n)) {
      return Status::InvalidInput(where + "answer " + answer->dump() + " is outside [0, " + std::to_string(n) +
                                  ") (" + std::to_string(n) + " choices)");
    }
    item.answer = answer->get<int64_t>();
  }
  return item;
}

std::vector<int32_t> Ids(const std::vector<uint32_t>& ids) {
  return std::vector<int32_t>(ids.begin(), ids.end());
}

}  // namespace

Result<EvalTasks> ParseEvalTasks(const std::string& path, std::string_view contents) {
  EvalTasks out;
  out.path = path;
  int64_t line_no = 0;
  size_t pos = 0;
  while (pos < contents.size()) {
    size_t end = contents.find('\n', pos);
    if (end == std::string_view::npos) end = contents.size();
    std::string line(contents.substr(pos, end - pos));
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = At(path, line_no);
    EvalKind kind = EvalKind::kPerplexity;
    std::string name;
    LATAM_ASSIGN_OR_RETURN(EvalItem item, ParseLine(line, where, &name, &kind));
    auto task = std::find_if(out.tasks.begin(), out.tasks.end(), [&](const EvalTask& t) { return t.name == name; });
    if (task == out.tasks.end()) {
      out.tasks.push_back(EvalTask{name, kind, {}});
      task = out.tasks.end() - 1;
    } else if (task->kind != kind) {
      const EvalItem& first = out.items[task->items.front()];
      return Status::InvalidInput(where + "task \"" + name + "\" mixes kinds: this line is " + KindName(kind) +
                                  ", line " + std::to_string(first.line) + " made it " + KindName(task->kind));
    }
    item.line = line_no;
    item.task = static_cast<size_t>(task - out.tasks.begin());
    task->items.push_back(out.items.size());
    out.items.push_back(std::move(item));
  }
  if (out.items.empty()) return Status::InvalidInput(path + ": no tasks (the file has no JSON lines)");
  return out;
}

Result<EvalTasks> ReadEvalTasks(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st)) return Status::InvalidInput("--tasks " + path + ": no such file");
  if (std::filesystem::is_directory(st)) return Status::InvalidInput("--tasks " + path + ": is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::InvalidInput("--tasks " + path + ": cannot be read: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return Status::InvalidInput("--tasks " + path + ": read error");
  return ParseEvalTasks(path, text.str());
}

std::pair<std::string, std::string> MoveTrailingSpace(const std::string& context, const std::string& continuation) {
  // Python's str.rstrip() without arguments strips Unicode whitespace; the
  // ASCII whitespace characters cover what benchmark files put there.
  size_t keep = context.size();
  while (keep > 0 && std::strchr(" \t\n\r\v\f", context[keep - 1]) != nullptr) --keep;
  return {context.substr(0, keep), context.substr(keep) + continuation};
}

std::optional<int32_t> EvalPrefixToken(const data::Tokenizer& tokenizer) {
  for (const char* name : {"<|begin_of_text|>", "<|end_of_text|>"}) {
    if (auto id = tokenizer.TokenId(name)) return static_cast<int32_t>(*id);
  }
  return std::nullopt;
}

Result<std::vector<ItemSpans>> BuildItemSpans(const EvalTasks& tasks, const data::Tokenizer& tokenizer,
                                              std::optional<int32_t> prefix, int64_t max_seq_len) {
  std::vector<ItemSpans> out(tasks.items.size());
  data::Tokenizer::Cache cache;
  for (size_t i = 0; i < tasks.items.size(); ++i) {
    const EvalItem& item = tasks.items[i];
    const std::string where = At(tasks.path, item.line);
    if (tasks.tasks[item.task].kind == EvalKind::kPerplexity) {
      std::vector<int32_t> all;
      if (prefix) all.push_back(*prefix);
      const std::vector<int32_t> text = Ids(tokenizer.Encode(item.text, &cache));
      if (text.size() < 2) {
        return Status::InvalidInput(where + "text tokenizes to " + std::to_string(text.size()) +
                                    " token(s); a perplexity text needs at least 2");
      }
      all.insert(all.end(), text.begin(), text.end());
      // Non-overlapping windows of at most max_seq_len predicted tokens.
      const int64_t n = static_cast<int64_t>(all.size());
      for (int64_t a = 1; a < n; a += max_seq_len) {
        const int64_t b = std::min(n, a + max_seq_len);
        out[i].spans.push_back(ScoredSpan{std::vector<int32_t>(all.begin() + (a - 1), all.begin() + b), 1});
      }
      continue;
    }
    for (size_t c = 0; c < item.choices.size(); ++c) {
      const auto [context, continuation] = MoveTrailingSpace(item.context, item.choices[c]);
      const std::vector<int32_t> ctx = Ids(tokenizer.Encode(context, &cache));
      const std::vector<int32_t> whole = Ids(tokenizer.Encode(context + continuation, &cache));
      const std::string which = std::string("choices[").append(std::to_string(c)).append("]");
      if (whole.size() <= ctx.size()) {
        return Status::InvalidInput(where + which + " adds no tokens to the context");
      }
      std::vector<int32_t> seq;
      if (prefix) seq.push_back(*prefix);
      seq.insert(seq.end(), ctx.begin(), ctx.end());
      seq.insert(seq.end(), whole.begin() + static_cast<std::ptrdiff_t>(ctx.size()), whole.end());
      const int64_t cont = static_cast<int64_t>(whole.size() - ctx.size());
      if (cont > max_seq_len) {
        return Status::InvalidInput(where + which + " is " + std::to_string(cont) +
                                    " tokens, more than the model's max_seq_len of " + std::to_string(max_seq_len));
      }
      if (static_cast<int64_t>(seq.size()) == cont) {
        return Status::InvalidInput(where + "empty context and the tokenizer has no <|begin_of_text|> or "
                                    "<|end_of_text|> to start from");
      }
      // Cut from the left: the last max_seq_len + 1 tokens.
      const int64_t drop = std::max<int64_t>(0, static_cast<int64_t>(seq.size()) - (max_seq_len + 1));
      seq.erase(seq.begin(), seq.begin() + drop);
      const int64_t first = static_cast<int64_t>(seq.size()) - cont;
      out[i].spans.push_back(ScoredSpan{std::move(seq), first});
    }
  }
  return out;
}

size_t ItemValueCount(const EvalItem& item, EvalKind kind) {
  return kind == EvalKind::kPerplexity ? 2 : item.choices.size();
}

std::vector<double> ItemValues(const EvalItem& item, EvalKind kind, const ItemSpans& spans,
                               const std::vector<double>& span_nll) {
  LATAM_CHECK(span_nll.size() == spans.spans.size(), "one NLL per span");
  if (kind == EvalKind::kPerplexity) {
    double nll = 0.0;
    int64_t tokens = 0;
    for (size_t k = 0; k < spans.spans.size(); ++k) {
      nll += span_nll[k];
      tokens += spans.spans[k].predicted();
    }
    return {nll, static_cast<double>(tokens)};
  }
  LATAM_CHECK(span_nll.size() == item.choices.size(), "one span per choice");
  return span_nll;
}

std::vector<double> ScoreItem(const EvalItem& item, EvalKind kind, const ItemSpans& spans, SequenceScorer& scorer) {
  std::vector<double> nll;
  for (const ScoredSpan& s : spans.spans) nll.push_back(scorer.SumNll(s));
  return ItemValues(item, kind, spans, nll);
}

size_t ArgmaxChoice(const std::vector<double>& log_likelihoods) {
  size_t best = 0;
  for (size_t i = 1; i < log_likelihoods.size(); ++i) {
    if (log_likelihoods[i] > log_likelihoods[best]) best = i;
  }
  return best;
}

size_t ArgmaxChoiceNormalized(const std::vector<double>& log_likelihoods, const std::vector<std::string>& choices) {
  std::vector<double> normalized(log_likelihoods.size());
  for (size_t i = 0; i < normalized.size(); ++i) {
    normalized[i] = log_likelihoods[i] / static_cast<double>(choices[i].size());
  }
  return ArgmaxChoice(normalized);
}

std::vector<TaskResult> SummarizeTasks(const EvalTasks& tasks, const std::vector<std::vector<double>>& values) {
  std::vector<TaskResult> out;
  for (const EvalTask& task : tasks.tasks) {
    TaskResult r;
    r.name = task.name;
    r.kind = task.kind;
    r.n = static_cast<int64_t>(task.items.size());
    if (task.kind == EvalKind::kPerplexity) {
      double nll = 0.0, tokens = 0.0;
      for (size_t i : task.items) {
        nll += values[i][0];
        tokens += values[i][1];
      }
      r.tokens = static_cast<int64_t>(tokens);
      r.perplexity = std::exp(nll / tokens);
    } else {
      int64_t right = 0, right_norm = 0;
      for (size_t i : task.items) {
        const EvalItem& item = tasks.items[i];
        std::vector<double> ll(values[i].size());
        for (size_t c = 0; c < ll.size(); ++c) ll[c] = -values[i][c];
        right += ArgmaxChoice(ll) == static_cast<size_t>(item.answer) ? 1 : 0;
        right_norm += ArgmaxChoiceNormalized(ll, item.choices) == static_cast<size_t>(item.answer) ? 1 : 0;
      }
      r.accuracy = static_cast<double>(right) / static_cast<double>(r.n);
      r.accuracy_norm = static_cast<double>(right_norm) / static_cast<double>(r.n);
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::string TaskResultJson(const TaskResult& result) {
  nlohmann::ordered_json j;
  j["task"] = result.name;
  j["n"] = result.n;
  if (result.kind == EvalKind::kPerplexity) {
    j["perplexity"] = result.perplexity;
    j["tokens"] = result.tokens;
  } else {
    j["accuracy"] = result.accuracy;
    j["accuracy_norm"] = result.accuracy_norm;
  }
  // Task names come from the user's file: invalid UTF-8 is replaced, not fatal.
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

Result<EvalModel> LoadEvalModel(const EvalModelOptions& options) {
  EvalModel out;
  LATAM_ASSIGN_OR_RETURN(out.model, LoadModel(options.checkpoint));
  out.tokenizer_path = options.tokenizer.empty() ? out.model.tokenizer_path : options.tokenizer;
  if (out.tokenizer_path.empty()) {
    return Status::InvalidInput("checkpoint " + options.checkpoint + " has no tokenizer.json; pass --tokenizer FILE");
  }
  LATAM_ASSIGN_OR_RETURN(out.tokenizer, data::Tokenizer::Load(out.tokenizer_path));
  if (out.tokenizer->vocab_size() > static_cast<uint32_t>(out.model.shape.vocab)) {
    return Status::InvalidInput("tokenizer " + out.tokenizer_path + " has " +
                                std::to_string(out.tokenizer->vocab_size()) +
                                " tokens, more than the model's vocabulary of " +
                                std::to_string(out.model.shape.vocab));
  }
  return out;
}

namespace {

ActivationOptions ScorerActivations(int64_t seq_len) {
  ActivationOptions a;
  a.micro_batch = 1;
  a.seq_len = seq_len;
  return a;
}

}  // namespace

ModelScorer::ModelScorer(const ModelShape& shape, const ParameterSet& params, int64_t seq_len)
    : seq_len_(seq_len),
      model_(shape, ScorerActivations(seq_len)),
      inputs_(static_cast<size_t>(seq_len)),
      targets_(static_cast<size_t>(seq_len)) {
  ParameterSet& dst = model_.parameters();
  for (size_t i = 0; i < dst.size(); ++i) {
    const Tensor from = params.param(dst.spec(i).name), to = dst.param(i);
    LATAM_CHECK(from.shape == to.shape, "parameter shapes differ");
    std::memcpy(to.data, from.data, to.bytes());
  }
  dst.SyncCompute();
}

double ModelScorer::SumNll(const ScoredSpan& span) {
  const int64_t n = static_cast<int64_t>(span.tokens.size());
  LATAM_CHECK(n >= 2 && n - 1 <= seq_len_ && span.first_target >= 1 && span.first_target < n,
              "span does not fit the scorer");
  // Row j reads tokens[j] and predicts tokens[j + 1].
  std::fill(inputs_.begin(), inputs_.end(), 0);
  std::fill(targets_.begin(), targets_.end(), -1);
  for (int64_t j = 0; j + 1 < n; ++j) {
    inputs_[static_cast<size_t>(j)] = span.tokens[static_cast<size_t>(j)];
    if (j + 1 >= span.first_target) targets_[static_cast<size_t>(j)] = span.tokens[static_cast<size_t>(j + 1)];
  }
  return model_.ForwardLoss(inputs_.data(), targets_.data());
}

int64_t PaddedRows(int64_t inputs, int64_t max_seq_len) {
  int64_t rows = 16;
  while (rows < inputs) rows *= 2;
  return std::min(rows, max_seq_len);
}

std::vector<double> ScoreSpans(const ModelShape& shape, const ParameterSet& params,
                               const std::vector<const ScoredSpan*>& spans) {
  std::vector<double> out(spans.size(), 0.0);
  std::map<int64_t, std::vector<size_t>> by_rows;
  for (size_t i = 0; i < spans.size(); ++i) {
    by_rows[PaddedRows(static_cast<int64_t>(spans[i]->tokens.size()) - 1, shape.max_seq_len)].push_back(i);
  }
  for (const auto& [rows, members] : by_rows) {
    ModelScorer scorer(shape, params, rows);
    for (size_t i : members) out[i] = scorer.SumNll(*spans[i]);
  }
  return out;
}

}  // namespace latam
