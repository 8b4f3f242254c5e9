#include "checkpoint/hf_config.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

namespace latam::ckpt {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// Typed access to the keys of one JSON object; every error names the file
// and the dotted key.
class KeyReader {
 public:
  KeyReader(const Json& obj, const std::string& path, std::string prefix)
      : obj_(obj), path_(path), prefix_(std::move(prefix)) {}

  // The key's value, or nullptr when it is absent or null.
  const Json* Get(const std::string& key) const {
    const auto it = obj_.find(key);
    return (it == obj_.end() || it->is_null()) ? nullptr : &*it;
  }
  Status Error(const std::string& key, const std::string& what) const {
    return Status::InvalidInput(path_ + ": " + prefix_ + key + ": " + what);
  }
  Status Missing(const std::string& key) const { return Error(key, "missing required key"); }

  // A positive integer that fits int32 (integral floats such as 8192.0 pass).
  Status PositiveInt(const std::string& key, bool required, int32_t fallback, int32_t* out) const {
    const Json* v = Get(key);
    if (v == nullptr) {
      if (required) return Missing(key);
      *out = fallback;
      return Status::Ok();
    }
    double d = 0;
    if (v->is_number_integer()) {
      d = static_cast<double>(v->get<int64_t>());
    } else if (v->is_number_float()) {
      d = v->get<double>();
    } else {
      return Error(key, "expected an integer, got " + v->dump());
    }
    if (d != std::floor(d) || d < 1 || d > std::numeric_limits<int32_t>::max()) {
      return Error(key, "expected a positive 32-bit integer, got " + v->dump());
    }
    *out = static_cast<int32_t>(d);
    return Status::Ok();
  }
  Status Number(const std::string& key, bool required, double fallback, double* out) const {
    const Json* v = Get(key);
    if (v == nullptr) {
      if (required) return Missing(key);
      *out = fallback;
      return Status::Ok();
    }
    if (!v->is_number()) return Error(key, "expected a number, got " + v->dump());
    *out = v->get<double>();
    if (!std::isfinite(*out)) return Error(key, "expected a finite number, got " + v->dump());
    return Status::Ok();
  }
  Status Bool(const std::string& key, bool fallback, bool* out) const {
    const Json* v = Get(key);
    if (v == nullptr) {
      *out = fallback;
      return Status::Ok();
    }
    if (!v->is_boolean()) return Error(key, "expected true or false, got " + v->dump());
    *out = v->get<bool>();
    return Status::Ok();
  }
  // "" when absent or null.
  Status String(const std::string& key, std::string* out) const {
    const Json* v = Get(key);
    out->clear();
    if (v == nullptr) return Status::Ok();
    if (!v->is_string()) return Error(key, "expected a string, got " + v->dump());
    *out = v->get<std::string>();
    return Status::Ok();
  }
  // A token id: a non-negative integer; -1 when absent or null.
  Status TokenId(const std::string& key, const Json* v, int64_t* out) const {
    *out = -1;
    if (v == nullptr || v->is_null()) return Status::Ok();
    if (!v->is_number_integer() || v->get<int64_t>() < 0) {
      return Error(key, "expected a non-negative integer token id, got " + v->dump());
    }
    *out = v->get<int64_t>();
    return Status::Ok();
  }

 private:
  const Json& obj_;
  const std::string& path_;
  std::string prefix_;
};

// rope_scaling (or transformers 5's rope_parameters) into `model`.
Status ParseRopeScaling(const Json& rs, const std::string& path, const std::string& key, config::ModelConfig* model) {
  if (!rs.is_object()) {
    return Status::InvalidInput(path + ": " + key + ": expected an object or null, got " + rs.dump());
  }
  const KeyReader r(rs, path, key + ".");
  std::string type;
  std::string type_key = "rope_type";
  LATAM_RETURN_IF_ERROR(r.String("rope_type", &type));
  if (type.empty()) {
    type_key = "type";
    LATAM_RETURN_IF_ERROR(r.String("type", &type));
  }
  if (type == "default") return Status::Ok();  // plain RoPE, spelled out
  if (type != "llama3") {
    return r.Error(type_key, "unsupported RoPE scaling type \"" + type + "\" (only \"llama3\" is supported)");
  }
  double factor = 0, low = 0, high = 0;
  int32_t original = 0;
  LATAM_RETURN_IF_ERROR(r.Number("factor", true, 0, &factor));
  LATAM_RETURN_IF_ERROR(r.Number("low_freq_factor", true, 0, &low));
  LATAM_RETURN_IF_ERROR(r.Number("high_freq_factor", true, 0, &high));
  LATAM_RETURN_IF_ERROR(r.PositiveInt("original_max_position_embeddings", true, 0, &original));
  if (!(factor > 0)) return r.Error("factor", "must be positive, got " + rs["factor"].dump());
  if (!(low > 0) || !(high > low)) {
    return r.Error("high_freq_factor", "must exceed low_freq_factor > 0, got low " + rs["low_freq_factor"].dump() +
                                           " high " + rs["high_freq_factor"].dump());
  }
  config::RopeScaling* s = model->mutable_rope_scaling();
  s->set_factor(factor);
  s->set_low_freq_factor(low);
  s->set_high_freq_factor(high);
  s->set_original_max_position_embeddings(original);
  return Status::Ok();
}

}  // namespace

std::string HfConfigJson(const config::ModelConfig& m, const std::string& torch_dtype, int64_t bos_token_id,
                         int64_t eos_token_id) {
  OrderedJson j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_id >= 0) j["eos_token_id"] = eos_token_id;
  j["head_dim"] = m.n_heads() > 0 ? m.dim() / m.n_heads() : 0;
  j["hidden_act"] = "silu";
  j["hidden_size"] = m.dim();
  j["initializer_range"] = m.init_std();
  j["intermediate_size"] = m.ffn_dim();
  j["max_position_embeddings"] = m.max_seq_len();
  j["mlp_bias"] = false;
  j["num_attention_heads"] = m.n_heads();
  j["num_hidden_layers"] = m.n_layers();
  j["num_key_value_heads"] = m.n_kv_heads();
  j["pretraining_tp"] = 1;
  j["rms_norm_eps"] = m.norm_eps();
  if (m.has_rope_scaling() && m.rope_scaling().factor() > 0) {
    const config::RopeScaling& s = m.rope_scaling();
    OrderedJson rs;
    rs["factor"] = s.factor();
    rs["high_freq_factor"] = s.high_freq_factor();
    rs["low_freq_factor"] = s.low_freq_factor();
    rs["original_max_position_embeddings"] = s.original_max_position_embeddings();
    rs["rope_type"] = "llama3";
    j["rope_scaling"] = std::move(rs);
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["rope_theta"] = m.rope_theta();
  j["tie_word_embeddings"] = m.tie_embeddings();
  j["torch_dtype"] = torch_dtype;
  j["use_cache"] = true;
  j["vocab_size"] = m.vocab_size();
  return j.dump(2) + "\n";
}

Result<HfConfig> ParseHfConfig(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec)) {
    return Status::InvalidInput(path + " is not a regular file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::InvalidInput("cannot open " + path + ": " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return Status::IoError("cannot read " + path);
  return ParseHfConfigText(ss.str(), path);
}

Result<HfConfig> ParseHfConfigText(const std::string& text, const std::string& path) {
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::InvalidInput(path + ": not valid JSON");
  if (!j.is_object()) return Status::InvalidInput(path + ": not a JSON object");
  const KeyReader r(j, path, "");

  std::string model_type;
  LATAM_RETURN_IF_ERROR(r.String("model_type", &model_type));
  if (model_type != "llama") {
    bool llama_arch = false;
    if (const Json* a = r.Get("architectures"); a != nullptr && a->is_array()) {
      for (const Json& name : *a) llama_arch = llama_arch || (name.is_string() && name == "LlamaForCausalLM");
    }
    if (!llama_arch) {
      return r.Error("model_type", "expected \"llama\" (or architectures listing LlamaForCausalLM), got " +
                                       (model_type.empty() ? std::string("nothing") : "\"" + model_type + "\""));
    }
  }
  std::string act;
  LATAM_RETURN_IF_ERROR(r.String("hidden_act", &act));
  if (!act.empty() && act != "silu") return r.Error("hidden_act", "expected \"silu\", got \"" + act + "\"");
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    bool bias = false;
    LATAM_RETURN_IF_ERROR(r.Bool(key, false, &bias));
    if (bias) return r.Error(key, "biases are not supported (expected false)");
  }

  HfConfig out;
  config::ModelConfig& m = out.model;
  int32_t v = 0;
  LATAM_RETURN_IF_ERROR(r.PositiveInt("vocab_size", true, 0, &v));
  m.set_vocab_size(v);
  LATAM_RETURN_IF_ERROR(r.PositiveInt("hidden_size", true, 0, &v));
  m.set_dim(v);
  LATAM_RETURN_IF_ERROR(r.PositiveInt("num_hidden_layers", true, 0, &v));
  m.set_n_layers(v);
  LATAM_RETURN_IF_ERROR(r.PositiveInt("num_attention_heads", true, 0, &v));
  m.set_n_heads(v);
  LATAM_RETURN_IF_ERROR(r.PositiveInt("num_key_value_heads", false, m.n_heads(), &v));
  m.set_n_kv_heads(v);
  LATAM_RETURN_IF_ERROR(r.PositiveInt("intermediate_size", true, 0, &v));
  m.set_ffn_dim(v);
  LATAM_RETURN_IF_ERROR(r.PositiveInt("max_position_embeddings", false, 2048, &v));
  m.set_max_seq_len(v);
  if (m.dim() % m.n_heads() != 0) {
    return r.Error("hidden_size", std::to_string(m.dim()) +
                                      " is not divisible by num_attention_heads = " + std::to_string(m.n_heads()));
  }
  if (m.n_heads() % m.n_kv_heads() != 0) {
    return r.Error("num_key_value_heads", std::to_string(m.n_kv_heads()) +
                                              " does not divide num_attention_heads = " + std::to_string(m.n_heads()));
  }
  if (r.Get("head_dim") != nullptr) {
    LATAM_RETURN_IF_ERROR(r.PositiveInt("head_dim", true, 0, &v));
    if (v != m.dim() / m.n_heads()) {
      return r.Error("head_dim", std::to_string(v) + " differs from hidden_size / num_attention_heads = " +
                                     std::to_string(m.dim() / m.n_heads()) + " (not supported)");
    }
  }
  double d = 0;
  LATAM_RETURN_IF_ERROR(r.Number("rms_norm_eps", false, 1e-6, &d));
  if (!(d > 0 && d < 1)) return r.Error("rms_norm_eps", "expected a number in (0, 1), got " + j["rms_norm_eps"].dump());
  m.set_norm_eps(d);
  LATAM_RETURN_IF_ERROR(r.Number("initializer_range", false, 0.02, &d));
  if (d < 0) return r.Error("initializer_range", "expected a number >= 0, got " + j["initializer_range"].dump());
  m.set_init_std(d);
  bool tie = false;
  LATAM_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", false, &tie));
  m.set_tie_embeddings(tie);

  // RoPE: rope_theta + rope_scaling, or transformers 5's rope_parameters
  // holding both.
  const Json* params = r.Get("rope_parameters");
  const Json* theta_holder = &j;
  std::string theta_prefix;
  if (r.Get("rope_theta") == nullptr && params != nullptr && params->is_object() && params->contains("rope_theta")) {
    theta_holder = params;
    theta_prefix = "rope_parameters.";
  }
  LATAM_RETURN_IF_ERROR(KeyReader(*theta_holder, path, theta_prefix).Number("rope_theta", false, 10000.0, &d));
  if (!(d > 0)) return Status::InvalidInput(path + ": " + theta_prefix + "rope_theta: must be positive");
  m.set_rope_theta(d);
  if (const Json* rs = r.Get("rope_scaling"); rs != nullptr) {
    LATAM_RETURN_IF_ERROR(ParseRopeScaling(*rs, path, "rope_scaling", &m));
  } else if (params != nullptr) {
    LATAM_RETURN_IF_ERROR(ParseRopeScaling(*params, path, "rope_parameters", &m));
  }

  LATAM_RETURN_IF_ERROR(r.String("torch_dtype", &out.torch_dtype));
  if (out.torch_dtype.empty()) LATAM_RETURN_IF_ERROR(r.String("dtype", &out.torch_dtype));
  LATAM_RETURN_IF_ERROR(r.TokenId("bos_token_id", r.Get("bos_token_id"), &out.bos_token_id));
  if (const Json* eos = r.Get("eos_token_id"); eos != nullptr && eos->is_array()) {
    for (size_t i = 0; i < eos->size(); ++i) {
      int64_t id = -1;
      LATAM_RETURN_IF_ERROR(r.TokenId("eos_token_id[" + std::to_string(i) + "]", &(*eos)[i], &id));
      if (id >= 0) out.eos_token_ids.push_back(id);
    }
  } else {
    int64_t id = -1;
    LATAM_RETURN_IF_ERROR(r.TokenId("eos_token_id", eos, &id));
    if (id >= 0) out.eos_token_ids.push_back(id);
  }
  if (!out.eos_token_ids.empty()) out.eos_token_id = out.eos_token_ids.front();
  return out;
}

}  // namespace latam::ckpt
