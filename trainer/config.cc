#include "trainer/config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <tuple>
#include <utility>
#include <vector>

#include "model/layout.h"
#include "model/lora.h"

namespace latam {

namespace pb = google::protobuf;

namespace {

// The first error the parser reports, and where (0-based).
class CollectErrors : public pb::io::ErrorCollector {
 public:
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (!any_) {
      any_ = true;
      line_ = line;
      column_ = column;
      message_ = message;
    }
  }
  bool any() const { return any_; }
  int line() const { return line_; }
  int column() const { return column_; }
  const std::string& message() const { return message_; }

 private:
  bool any_ = false;
  int line_ = 0, column_ = 0;
  std::string message_;
};

// "cpu, cuda": the value names of `type`, in declaration order.
std::string EnumValueNames(const pb::EnumDescriptor* type) {
  std::string out;
  for (int i = 0; i < type->value_count(); ++i) out += (i > 0 ? ", " : "") + type->value(i)->name();
  return out;
}

std::string NotOneOf(const std::string& field_path, const std::string& value, const pb::EnumDescriptor* type) {
  return field_path + ": '" + value + "' is not one of " + EnumValueNames(type);
}

// The enum field of Config called `name`, with its dotted path ("device" ->
// train.device); field is nullptr unless exactly one enum field has that name.
struct EnumField {
  std::string path;
  const pb::FieldDescriptor* field = nullptr;
};

void FindEnumFields(const pb::Descriptor* type, const std::string& prefix, const std::string& name, int depth,
                    std::vector<EnumField>* found) {
  if (depth > 8) return;
  for (int i = 0; i < type->field_count(); ++i) {
    const pb::FieldDescriptor* f = type->field(i);
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM && f->name() == name) {
      found->push_back({prefix + f->name(), f});
    } else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      FindEnumFields(f->message_type(), prefix + f->name() + ".", name, depth + 1, found);
    }
  }
}

EnumField FindEnumField(const std::string& name) {
  std::vector<EnumField> found;
  FindEnumFields(Config::descriptor(), "", name, 0, &found);
  return found.size() == 1 ? found[0] : EnumField{name, nullptr};
}

// The 0-based line and column of byte `offset` of `text`.
std::pair<int, int> LineColumn(const std::string& text, size_t offset) {
  int line = 0;
  size_t line_start = 0;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  return {line, static_cast<int>(offset - line_start)};
}

std::string Where(int line, int column) {
  return "line " + std::to_string(line + 1) + ", column " + std::to_string(column + 1) + ": ";
}

// The text of the parser's first error, told in the config's terms where it
// is about an enum value: an unknown name, or a name written as a string
// (enum values are bare words in text format: `device: cuda`).
std::string DescribeParseError(const CollectErrors& errors, const std::string& text) {
  const std::string& m = errors.message();
  // protobuf: Unknown enumeration value of "tpu" for field "device".
  // (reported at the token after the value: point at the value instead)
  const std::string unknown = "Unknown enumeration value of \"", for_field = "\" for field \"";
  if (m.rfind(unknown, 0) == 0) {
    const size_t value_end = m.find(for_field, unknown.size());
    const size_t name_end = value_end == std::string::npos ? value_end : m.find('"', value_end + for_field.size());
    if (name_end != std::string::npos) {
      const std::string value = m.substr(unknown.size(), value_end - unknown.size());
      const EnumField f =
          FindEnumField(m.substr(value_end + for_field.size(), name_end - value_end - for_field.size()));
      if (f.field != nullptr) {
        // The error's position as a byte offset, then the value's last occurrence before it.
        size_t offset = 0;
        for (int line = 0; line < errors.line() && offset != std::string::npos; ++line) {
          offset = text.find('\n', offset);
          if (offset != std::string::npos) ++offset;
        }
        int line = errors.line(), column = errors.column();
        if (offset != std::string::npos && !value.empty()) {
          const size_t at = text.rfind(value, offset + static_cast<size_t>(column));
          if (at != std::string::npos) std::tie(line, column) = LineColumn(text, at);
        }
        return Where(line, column) + NotOneOf(f.path, value, f.field->enum_type());
      }
    }
  }
  const std::string where = Where(errors.line(), errors.column());
  // protobuf: Expected integer or identifier, got: "cuda"
  const std::string quoted = "Expected integer or identifier, got: \"";
  if (m.rfind(quoted, 0) == 0 && m.size() > quoted.size() && m.back() == '"') {
    const std::string value = m.substr(quoted.size(), m.size() - quoted.size() - 1);
    // The field name is the last word before the ':' ahead of the error.
    std::istringstream lines(text);
    std::string line;
    for (int i = 0; i <= errors.line() && std::getline(lines, line);) ++i;
    const std::string head = line.substr(0, std::min(line.size(), static_cast<size_t>(errors.column())));
    const size_t colon = head.find_last_of(':');
    if (colon != std::string::npos) {
      size_t end = colon;
      while (end > 0 && head[end - 1] == ' ') --end;
      size_t begin = end;
      while (begin > 0 && (std::isalnum(static_cast<unsigned char>(head[begin - 1])) || head[begin - 1] == '_'))
        --begin;
      const EnumField f = FindEnumField(head.substr(begin, end - begin));
      if (f.field != nullptr) {
        if (f.field->enum_type()->FindValueByName(value) == nullptr) {
          return where + NotOneOf(f.path, value, f.field->enum_type()) + " (written without quotes)";
        }
        return where + f.path + ": enum values are written without quotes: " + f.field->name() + ": " + value;
      }
    }
  }
  return where + m;
}

}  // namespace

Result<Config> LoadConfigFile(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec) return Status::InvalidInput(path + ": cannot open config file: " + ec.message());
  if (std::filesystem::is_directory(status)) return Status::InvalidInput(path + ": is a directory, not a config file");
  std::ifstream in(path);
  if (!in) return Status::InvalidInput(path + ": cannot open config file");
  std::stringstream text;
  text << in.rdbuf();
  Config config;
  pb::TextFormat::Parser parser;
  CollectErrors errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text.str(), &config)) {
    return Status::InvalidInput(path + ": " +
                                (errors.any() ? DescribeParseError(errors, text.str()) : "not a valid config"));
  }
  return config;
}

Status ApplyOverride(Config* config, const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    return Status::InvalidInput("--set " + assignment + ": expected path=value");
  }
  const std::string path = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  pb::Message* msg = config;
  std::stringstream parts(path);
  std::string part;
  std::vector<std::string> components;
  while (std::getline(parts, part, '.')) components.push_back(part);
  for (size_t i = 0; i < components.size(); ++i) {
    std::string name = components[i];
    int index = -1;
    if (const size_t open = name.find('['); open != std::string::npos) {
      const size_t close = name.find(']', open);
      if (close != name.size() - 1) return Status::InvalidInput("--set " + path + ": malformed index in " + name);
      try {
        index = std::stoi(name.substr(open + 1, close - open - 1));
      } catch (const std::exception&) {
        return Status::InvalidInput("--set " + path + ": malformed index in " + name);
      }
      name = name.substr(0, open);
    }
    const pb::Descriptor* desc = msg->GetDescriptor();
    const pb::FieldDescriptor* field = desc->FindFieldByName(name);
    if (field == nullptr) return Status::InvalidInput("--set " + path + ": " + desc->name() + " has no field " + name);
    const pb::Reflection* refl = msg->GetReflection();
    const bool last = i + 1 == components.size();
    if (field->is_repeated() && field->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING && last && index >= 0) {
      // A list of strings (adapter.targets[1]=v_proj): set element `index`,
      // or append at index == size.
      const int size = refl->FieldSize(*msg, field);
      if (index > size) {
        return Status::InvalidInput("--set " + path + ": index " + std::to_string(index) + " > size " +
                                    std::to_string(size) + " of " + name);
      }
      if (index == size) {
        refl->AddString(msg, field, value);
      } else {
        refl->SetRepeatedString(msg, field, index, value);
      }
      continue;
    }
    if (field->is_repeated()) {
      if (field->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE || index < 0 || last) {
        return Status::InvalidInput("--set " + path + ": " + name + " is a list; address one element's field, e.g. " +
                                    name + "[0].<field>");
      }
      const int size = refl->FieldSize(*msg, field);
      if (index > size) {
        return Status::InvalidInput("--set " + path + ": index " + std::to_string(index) + " > size " +
                                    std::to_string(size) + " of " + name);
      }
      msg = index == size ? refl->AddMessage(msg, field) : refl->MutableRepeatedMessage(msg, field, index);
      continue;
    }
    if (index >= 0) return Status::InvalidInput("--set " + path + ": " + name + " is not a list");
    if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (last) return Status::InvalidInput("--set " + path + ": " + name + " is a message; set one of its fields");
      msg = refl->MutableMessage(msg, field);
      continue;
    }
    if (!last) return Status::InvalidInput("--set " + path + ": " + name + " has no sub-fields");
    if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
      refl->SetString(msg, field, value);
    } else if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM) {
      // By name only (train.device=cuda), not by number.
      const pb::EnumValueDescriptor* named = field->enum_type()->FindValueByName(value);
      if (named == nullptr) return Status::InvalidInput(NotOneOf(path, value, field->enum_type()));
      refl->SetEnum(msg, field, named);
    } else {
      // Parse "name: value" into an empty message of the same type (errors are
      // collected, not logged), then merge the one field it sets.
      std::unique_ptr<pb::Message> scratch(msg->New());
      pb::TextFormat::Parser parser;
      CollectErrors errors;
      parser.RecordErrorsTo(&errors);
      std::vector<const pb::FieldDescriptor*> set_fields;
      const bool parsed = parser.ParseFromString(field->name() + ": " + value, scratch.get());
      if (parsed) scratch->GetReflection()->ListFields(*scratch, &set_fields);
      if (!parsed || set_fields.size() != 1) {
        return Status::InvalidInput("--set " + path + ": cannot parse '" + value + "' as " + field->type_name());
      }
      msg->MergeFrom(*scratch);
    }
  }
  return Status::Ok();
}

int DataParallelSize(const Config& config, int world_size) {
  const auto& p = config.parallel();
  if (p.data() > 0) return p.data();
  if (world_size <= 0) return 1;
  const int model_ranks = p.tensor() * p.context() * p.pipeline();
  return model_ranks > 0 ? world_size / model_ranks : 0;
}

namespace {

// Accumulates the first validation error, with its field path.
class Checker {
 public:
  void Require(bool ok, const std::string& field, const std::string& what) {
    if (!ok && status_.ok()) status_ = Status::InvalidInput(field + ": " + what);
  }
  template <typename T>
  void Positive(T value, const std::string& field) {
    Require(value > 0, field, "must be > 0 (got " + Str(value) + ")");
  }
  template <typename T>
  void AtMost(T value, const std::string& field, T limit) {
    Require(value <= limit, field, Str(value) + " exceeds the limit of " + Str(limit));
  }
  void Finite(double value, const std::string& field) {
    Require(std::isfinite(value), field, "must be a finite number (got " + Str(value) + ")");
  }
  template <typename T>
  void Divisible(T value, const std::string& field, T by, const std::string& by_name) {
    Require(by > 0 && value % by == 0, field, Str(value) + " is not divisible by " + by_name + " = " + Str(by));
  }
  template <typename T>
  static std::string Str(T v) {
    std::ostringstream os;
    os << v;
    return os.str();
  }
  const Status& status() const { return status_; }
  bool ok() const { return status_.ok(); }

 private:
  Status status_;
};

// The pipeline stages' layer counts (model/layout.h, StageLayerCounts): an
// even split needs n_layers divisible by pipeline x virtual_stages; an
// uneven one needs the pinned end stages and the unpinned stages' equal
// share to add up to n_layers exactly, and every stage's count to be a
// positive multiple of virtual_stages (one or more layers per chunk).
void CheckStageSplit(Checker& c, const config::ModelConfig& m, const config::ParallelConfig& p) {
  const int64_t first = p.first_stage_layers(), last = p.last_stage_layers();
  c.Require(first >= 0, "parallel.first_stage_layers", "must be >= 0 (got " + Checker::Str(first) + ")");
  c.Require(last >= 0, "parallel.last_stage_layers", "must be >= 0 (got " + Checker::Str(last) + ")");
  if (!c.ok()) return;
  const StageSplit split{first, last};
  const int pp = p.pipeline(), vs = p.virtual_stages();
  if (!split.uneven()) {
    c.Divisible(m.n_layers(), "model.n_layers", pp * vs, "parallel.pipeline x parallel.virtual_stages");
    return;
  }
  // The field named is the pinned one (the first when both are).
  const std::string field = first > 0 ? "parallel.first_stage_layers" : "parallel.last_stage_layers";
  c.Require(pp > 1, field, "needs parallel.pipeline > 1 (got " + Checker::Str(pp) + ")");
  if (!c.ok()) return;
  const bool both = first > 0 && last > 0;
  const std::string pins =
      both ? Checker::Str(first) + " + parallel.last_stage_layers " + Checker::Str(last) : Checker::Str(first + last);
  const int unpinned = pp - (first > 0 ? 1 : 0) - (last > 0 ? 1 : 0);
  const int64_t rest = m.n_layers() - first - last;
  auto count = [](int64_t n, const std::string& what) { return Checker::Str(n) + " " + what + (n == 1 ? "" : "s"); };
  const std::string leave = pins + (both ? " leave " : " leaves ") + count(rest, "layer") + " for " +
                            count(unpinned, both ? "middle stage" : "other stage");
  const std::vector<int64_t> counts = StageLayerCounts(m.n_layers(), pp, split);
  int64_t total = 0;
  for (int64_t n : counts) total += n;
  if (unpinned == 0) {
    c.Require(total == m.n_layers(), field,
              pins + " add up to " + Checker::Str(total) + ", not model.n_layers = " + Checker::Str(m.n_layers()) +
                  " (parallel.pipeline = " + Checker::Str(pp) + " has no middle stages)");
    return;
  }
  c.Require(rest >= static_cast<int64_t>(unpinned) * vs, field,
            leave + " (each needs at least parallel.virtual_stages = " + Checker::Str(vs) + ", one per chunk)");
  if (!c.ok()) return;
  c.Require(total == m.n_layers(), field, leave + " (not divisible)");
  if (!c.ok()) return;
  for (int stage = 0; stage < pp; ++stage) {
    const int64_t n = counts[static_cast<size_t>(stage)];
    const bool pinned = (stage == 0 && first > 0) || (stage == pp - 1 && last > 0);
    const std::string name =
        pinned ? (stage == 0 ? "parallel.first_stage_layers" : "parallel.last_stage_layers") : field;
    const std::string what = pinned ? Checker::Str(n) + " is" : leave + ", " + Checker::Str(n) + " each,";
    c.Require(n % vs == 0, name,
              what + " not divisible by parallel.virtual_stages = " + Checker::Str(vs) +
                  " (a stage splits its layers evenly over its chunks)");
  }
}

// What a path field names.
enum class PathKind {
  kFile,             // an existing file that is not a directory
  kFileOrDirectory,  // an existing token shard or directory of shards
  kDirectory,        // an existing directory
  kNewDirectory,     // a directory, created when missing
};

// Looks `path` up without throwing: a name the system refuses (a component
// longer than 255 bytes, a file where a directory should be), a missing
// path or one of the wrong kind is an error naming `field`.
void CheckPath(Checker& c, const std::string& field, const std::string& path, PathKind kind) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    c.Require(false, field, "cannot use " + path + ": " + ec.message());
    return;
  }
  const bool exists = fs::exists(status), directory = fs::is_directory(status);
  switch (kind) {
    case PathKind::kFile:
      c.Require(exists, field, "no such file: " + path);
      c.Require(!exists || !directory, field, path + " is a directory, not a file");
      break;
    case PathKind::kFileOrDirectory:
      c.Require(exists, field, "no such file: " + path);
      break;
    case PathKind::kDirectory:
      c.Require(exists, field, "no such directory: " + path);
      c.Require(!exists || directory, field, path + " is not a directory");
      break;
    case PathKind::kNewDirectory:
      c.Require(!exists || directory, field, path + " exists and is not a directory");
      break;
  }
}

}  // namespace

Status ValidateConfig(const Config& config, const ValidationOptions& options) {
  Checker c;
  const auto& m = config.model();
  c.Require(config.has_model(), "model", "missing");
  c.Positive(m.vocab_size(), "model.vocab_size");
  c.Positive(m.dim(), "model.dim");
  c.Positive(m.n_layers(), "model.n_layers");
  c.Positive(m.n_heads(), "model.n_heads");
  c.Positive(m.n_kv_heads(), "model.n_kv_heads");
  c.Positive(m.ffn_dim(), "model.ffn_dim");
  c.Positive(m.max_seq_len(), "model.max_seq_len");
  c.Require(m.rope_theta() > 0, "model.rope_theta", "must be > 0");
  c.Require(m.norm_eps() > 0, "model.norm_eps", "must be > 0");
  c.Require(m.init_std() > 0, "model.init_std", "must be > 0");
  c.Finite(m.rope_theta(), "model.rope_theta");
  c.Finite(m.norm_eps(), "model.norm_eps");
  c.Finite(m.init_std(), "model.init_std");
  // Upper bounds (ConfigLimits, config.h).
  c.AtMost(m.n_layers(), "model.n_layers", ConfigLimits::kLayers);
  c.AtMost(m.dim(), "model.dim", ConfigLimits::kDim);
  c.AtMost(m.ffn_dim(), "model.ffn_dim", ConfigLimits::kFfnDim);
  c.AtMost(m.n_heads(), "model.n_heads", ConfigLimits::kHeads);
  c.AtMost(m.vocab_size(), "model.vocab_size", ConfigLimits::kVocab);
  c.AtMost(m.max_seq_len(), "model.max_seq_len", ConfigLimits::kSeqLen);
  if (!c.ok()) return c.status();
  c.Divisible(m.dim(), "model.dim", m.n_heads(), "model.n_heads");
  c.Divisible(m.n_heads(), "model.n_heads", m.n_kv_heads(), "model.n_kv_heads");
  c.Require((m.dim() / m.n_heads()) % 2 == 0, "model.dim",
            "head dimension dim / n_heads = " + Checker::Str(m.dim() / m.n_heads()) + " must be even for RoPE");
  if (m.has_rope_scaling() && m.rope_scaling().factor() > 0) {
    const auto& s = m.rope_scaling();
    c.Require(s.high_freq_factor() > s.low_freq_factor(), "model.rope_scaling.high_freq_factor",
              "must exceed low_freq_factor");
    c.Positive(s.low_freq_factor(), "model.rope_scaling.low_freq_factor");
    c.Positive(s.original_max_position_embeddings(), "model.rope_scaling.original_max_position_embeddings");
  }

  const auto& p = config.parallel();
  c.Positive(p.tensor(), "parallel.tensor");
  c.Positive(p.pipeline(), "parallel.pipeline");
  c.Positive(p.virtual_stages(), "parallel.virtual_stages");
  c.Positive(p.context(), "parallel.context");
  c.Require(p.data() >= 0, "parallel.data", "must be >= 0 (0 derives it from the world size)");
  c.Require(p.grad_bucket_mb() >= 0, "parallel.grad_bucket_mb", "must be >= 0 (0: one bucket)");
  c.Require(p.zero_stage() >= 0 && p.zero_stage() <= 2, "parallel.zero_stage",
            "must be 0, 1 or 2 (got " + Checker::Str(p.zero_stage()) + ")");
  c.Finite(p.grad_bucket_mb(), "parallel.grad_bucket_mb");
  if (!c.ok()) return c.status();
  LATAM_RETURN_IF_ERROR(ValidateAdapterConfig(config));
  if (config.adapter().kind() != config::AdapterConfig::NONE) {
    c.Require(p.zero_stage() <= 1, "parallel.zero_stage",
              "must be 0 or 1 with an adapter (its gradients are small; ZeRO-2 pools the base's)");
  }
  c.AtMost(p.pipeline(), "parallel.pipeline", ConfigLimits::kPipeline);
  c.AtMost(p.virtual_stages(), "parallel.virtual_stages", ConfigLimits::kVirtualStages);
  const int64_t ranks = int64_t{p.tensor()} * p.context() * p.pipeline() * std::max(1, p.data());
  c.Require(ranks <= ConfigLimits::kRanks, "parallel",
            "tensor x context x pipeline x data = " + Checker::Str(ranks) + " exceeds the limit of " +
                Checker::Str(ConfigLimits::kRanks) + " ranks");
  if (!c.ok()) return c.status();
  c.Divisible(m.n_heads(), "model.n_heads", p.tensor(), "parallel.tensor");
  c.Require(
      m.n_kv_heads() % p.tensor() == 0 || p.tensor() % m.n_kv_heads() == 0, "model.n_kv_heads",
      Checker::Str(m.n_kv_heads()) + " must divide or be divisible by parallel.tensor = " + Checker::Str(p.tensor()));
  c.Divisible(m.ffn_dim(), "model.ffn_dim", p.tensor(), "parallel.tensor");
  if (p.sequence_parallel()) {
    c.Require(p.tensor() > 1, "parallel.sequence_parallel",
              "needs parallel.tensor > 1 (it splits the sequence over the tensor-parallel ranks)");
    c.Require(config.data().seq_len() % (p.tensor() * std::max(1, p.context())) == 0, "data.seq_len",
              Checker::Str(config.data().seq_len()) + " is not divisible by parallel.tensor = " +
                  Checker::Str(p.tensor()) + (p.context() > 1 ? " x parallel.context = " + Checker::Str(p.context()) : "") +
                  " (parallel.sequence_parallel splits each rank's share of a sequence over the tensor-parallel ranks)");
  }
  if (p.context() > 1) {
    c.Require(config.data().seq_len() % (2 * p.context()) == 0, "data.seq_len",
              Checker::Str(config.data().seq_len()) + " is not divisible by 2 x parallel.context = " +
                  Checker::Str(2 * p.context()) + " (context parallelism splits each sequence into 2 x context chunks)");
  }
  c.Divisible(m.vocab_size(), "model.vocab_size", p.tensor(), "parallel.tensor");
  CheckStageSplit(c, m, p);
  if (options.world_size > 0) {
    const int model_ranks = p.tensor() * p.context() * p.pipeline();
    const int dp = DataParallelSize(config, options.world_size);
    c.Require(options.world_size == model_ranks * dp && dp > 0, "parallel",
              "world size " + Checker::Str(options.world_size) + " != tensor (" + Checker::Str(p.tensor()) + ")" +
                  (p.context() > 1 ? " x context (" + Checker::Str(p.context()) + ")" : std::string()) +
                  " x pipeline (" + Checker::Str(p.pipeline()) + ") x data (" +
                  (p.data() > 0 ? Checker::Str(p.data()) : "derived") + ")");
  }
  if (!c.ok()) return c.status();

  const auto& o = config.optimizer();
  for (const auto& [value, field] : std::vector<std::pair<double, const char*>>{
           {o.lr(), "optimizer.lr"},
           {o.min_lr(), "optimizer.min_lr"},
           {o.weight_decay(), "optimizer.weight_decay"},
           {o.grad_clip(), "optimizer.grad_clip"},
           {o.eps(), "optimizer.eps"}}) {
    c.Finite(value, field);
  }
  c.Require(o.lr() > 0, "optimizer.lr", "must be > 0");
  c.Require(o.min_lr() >= 0 && o.min_lr() <= o.lr(), "optimizer.min_lr", "must be in [0, optimizer.lr]");
  c.Require(o.warmup_steps() >= 0, "optimizer.warmup_steps", "must be >= 0");
  c.Require(o.weight_decay() >= 0, "optimizer.weight_decay", "must be >= 0");
  c.Require(o.grad_clip() >= 0, "optimizer.grad_clip", "must be >= 0 (0 disables clipping)");
  c.Require(o.beta1() >= 0 && o.beta1() < 1, "optimizer.beta1", "must be in [0, 1)");
  c.Require(o.beta2() >= 0 && o.beta2() < 1, "optimizer.beta2", "must be in [0, 1)");
  c.Require(o.eps() > 0, "optimizer.eps", "must be > 0");

  const auto& d = config.data();
  c.Positive(d.seq_len(), "data.seq_len");
  c.Require(d.seq_len() <= m.max_seq_len(), "data.seq_len",
            Checker::Str(d.seq_len()) + " exceeds model.max_seq_len = " + Checker::Str(m.max_seq_len()));

  const auto& t = config.train();
  c.Positive(t.steps(), "train.steps");
  c.Positive(t.micro_batch_size(), "train.micro_batch_size");
  c.Positive(t.global_batch_size(), "train.global_batch_size");
  c.Require(int64_t{t.micro_batch_size()} * d.seq_len() <= ConfigLimits::kMicroBatchTokens, "train.micro_batch_size",
            Checker::Str(t.micro_batch_size()) + " x data.seq_len " + Checker::Str(d.seq_len()) +
                " tokens per micro-batch exceed the limit of " + Checker::Str(ConfigLimits::kMicroBatchTokens));
  c.Require(t.log_every() >= 1, "train.log_every", "must be >= 1");
  c.Require(t.eval_every() >= 0, "train.eval_every", "must be >= 0");
  c.Require(t.eval_samples() >= 1, "train.eval_samples", "must be >= 1");
  c.Require(t.save_every() >= 0, "train.save_every", "must be >= 0");
  c.Require(t.keep_checkpoints() >= 1, "train.keep_checkpoints", "must be >= 1");
  c.Require(std::isfinite(t.collective_timeout_s()) && t.collective_timeout_s() >= 0, "train.collective_timeout_s",
            "must be a finite number of seconds >= 0 (0 = no watchdog)");
  c.Require(std::isfinite(t.spike_zscore()) && t.spike_zscore() >= 0, "train.spike_zscore",
            "must be >= 0 (0 = judge only non-finite values)");
  c.Require(t.spike_window() >= 2, "train.spike_window", "must be >= 2");
  c.AtMost(t.spike_window(), "train.spike_window", ConfigLimits::kSpikeWindow);
  c.Require(t.max_skipped_steps() >= 0, "train.max_skipped_steps", "must be >= 0 (0 = never roll back)");
  c.Require(t.straggler_every() >= 0, "train.straggler_every", "must be >= 0 (0 = off)");
  c.Require(t.init_load() == "weights" || t.init_load() == "optimizer" || t.init_load() == "all", "train.init_load",
            "must be weights, optimizer or all (got '" + t.init_load() + "')");
  const ComputeSettings compute = ComputeSettingsOf(config);
  c.Require(!(compute.device == Device::kCPU && compute.dtype == DType::kBF16), "train.precision",
            "bf16 needs train.device=cuda; the CPU backend computes in fp32");
  if (compute.device == Device::kCUDA) {
    // The CUDA kernels move rows in 16-byte packs (kernels/cuda/attention.h).
    const int64_t head_dim = m.dim() / m.n_heads();
    c.Require(head_dim % 8 == 0 && head_dim <= 256, "model.dim",
              "head dimension dim / n_heads = " + Checker::Str(head_dim) +
                  " must be a multiple of 8 and at most 256 for train.device=cuda");
  }
  if (!c.ok()) return c.status();
  const int dp = DataParallelSize(config, options.world_size);
  c.Divisible(static_cast<int64_t>(t.global_batch_size()), "train.global_batch_size",
              static_cast<int64_t>(t.micro_batch_size()) * dp, "train.micro_batch_size x data-parallel size");
  if (c.ok()) {
    // Every stage's pipeline schedule holds a few entries per micro-batch
    // and chunk, and the planner builds them all.
    const int64_t micro_batches = t.global_batch_size() / (static_cast<int64_t>(t.micro_batch_size()) * dp);
    c.Require(micro_batches <= ConfigLimits::kMicroBatches, "train.global_batch_size",
              "gives " + Checker::Str(micro_batches) + " micro-batches per data-parallel rank, over the limit of " +
                  Checker::Str(ConfigLimits::kMicroBatches) + " (raise train.micro_batch_size)");
    const int64_t entries = micro_batches * p.pipeline() * p.virtual_stages();
    c.Require(entries <= ConfigLimits::kScheduleEntries, "train.global_batch_size",
              "gives " + Checker::Str(micro_batches) + " micro-batches per data-parallel rank, x parallel.pipeline " +
                  Checker::Str(p.pipeline()) + " x parallel.virtual_stages " + Checker::Str(p.virtual_stages()) +
                  " = " + Checker::Str(entries) + " pipeline schedule entries, over the limit of " +
                  Checker::Str(ConfigLimits::kScheduleEntries) + " (raise train.micro_batch_size)");
  }
  if (p.virtual_stages() > 1 && c.ok()) {
    c.Require(p.pipeline() > 1, "parallel.virtual_stages", "needs parallel.pipeline > 1");
    // The interleaved schedule moves micro-batches through the stages in groups of `pipeline`.
    const int64_t micro_batches = t.global_batch_size() / (static_cast<int64_t>(t.micro_batch_size()) * dp);
    c.Require(micro_batches % p.pipeline() == 0, "train.global_batch_size",
              "gives " + Checker::Str(micro_batches) +
                  " micro-batches per data-parallel rank; interleaved "
                  "pipelining (parallel.virtual_stages > 1) needs a multiple of parallel.pipeline = " +
                  Checker::Str(p.pipeline()));
  }

  if (options.check_files) {
    c.Require(d.train_size() > 0, "data.train", "at least one training dataset is required");
    for (int i = 0; i < d.train_size(); ++i) {
      const std::string field = "data.train[" + std::to_string(i) + "]";
      c.Require(!d.train(i).path().empty(), field + ".path", "missing");
      if (!d.train(i).path().empty()) CheckPath(c, field + ".path", d.train(i).path(), PathKind::kFileOrDirectory);
      c.Require(d.train(i).weight() > 0 && std::isfinite(d.train(i).weight()), field + ".weight",
                "must be a finite number > 0");
    }
    for (int i = 0; i < d.eval_size(); ++i) {
      const std::string field = "data.eval[" + std::to_string(i) + "]";
      c.Require(!d.eval(i).name().empty(), field + ".name", "missing (it names the eval_loss/<name> metric)");
      c.Require(!d.eval(i).path().empty(), field + ".path", "missing");
      if (!d.eval(i).path().empty()) CheckPath(c, field + ".path", d.eval(i).path(), PathKind::kFileOrDirectory);
    }
    if (!d.tokenizer().empty()) CheckPath(c, "data.tokenizer", d.tokenizer(), PathKind::kFile);
    c.Require(!t.run_dir().empty(), "train.run_dir", "missing");
    if (!t.run_dir().empty()) CheckPath(c, "train.run_dir", t.run_dir(), PathKind::kNewDirectory);
    if (!t.init_from().empty()) CheckPath(c, "train.init_from", t.init_from(), PathKind::kDirectory);
  }
  return c.status();
}

ActivationOptions TrainingActivationOptions(const Config& config, int cp_rank) {
  const auto& p = config.parallel();
  const ComputeSettings compute = ComputeSettingsOf(config);
  ActivationOptions act;
  act.micro_batch = config.train().micro_batch_size();
  act.context = ContextSplit(std::max(1, p.context()), cp_rank, config.data().seq_len());
  act.seq_len = act.context.local_len();
  act.recompute = compute.recompute;
  act.sequence_parallel = p.sequence_parallel();
  act.document_mask = config.data().document_mask();
  act.reset_positions = config.data().reset_positions();
  if (compute.device == Device::kCUDA) {
    act.device = Device::kCUDA;
    act.dtype = compute.dtype;
    act.attention = compute.attention;
  }
  return act;
}

ComputeSettings ComputeSettingsOf(const Config& config) {
  using Train = config::TrainConfig;
  const Train& t = config.train();
  ComputeSettings s;
  switch (t.device()) {
    case Train::cpu:
      s.device = Device::kCPU;
      break;
    case Train::cuda:
      s.device = Device::kCUDA;
      break;
  }
  switch (t.precision()) {
    case Train::fp32:
      s.dtype = DType::kF32;
      break;
    case Train::bf16:
      s.dtype = DType::kBF16;
      break;
  }
  switch (t.recompute()) {
    case Train::NONE:
      s.recompute = Recompute::kNone;
      break;
    case Train::SELECTIVE:
      s.recompute = Recompute::kSelective;
      break;
    case Train::FULL:
      s.recompute = Recompute::kFull;
      break;
  }
  switch (t.attention()) {
    case Train::auto_:
      s.attention = AttentionChoice::kAuto;
      break;
    case Train::simple:
      s.attention = AttentionChoice::kSimple;
      break;
    case Train::wgmma:
      s.attention = AttentionChoice::kWgmma;
      break;
    case Train::wgmma_tma:
      s.attention = AttentionChoice::kWgmmaTma;
      break;
  }
  return s;
}

std::string ConfigToText(const Config& config) {
  std::string out;
  pb::TextFormat::Printer printer;
  printer.PrintToString(config, &out);
  return out;
}

}  // namespace latam
