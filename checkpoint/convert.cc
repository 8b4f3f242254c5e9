#include "checkpoint/convert.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>
#include <string_view>

#include "checkpoint/hf_config.h"
#include "checkpoint/state.h"
#include "data/tokenizer.h"
#include "model/layout.h"
#include "model/state.h"

namespace latam::ckpt {

namespace fs = std::filesystem;

namespace {

bool IsMoment(const std::string& name) {
  auto ends_with = [&](std::string_view suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(kExpAvgSuffix) || ends_with(kExpAvgSqSuffix);
}

// (group, layer, position within a layer) of a canonical name.
std::tuple<int, int64_t, int, std::string> SortKey(const std::string& name) {
  static const char* kLayerOrder[] = {"input_layernorm.weight",  "self_attn.q_proj.weight",
                                      "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                      "self_attn.o_proj.weight", "post_attention_layernorm.weight",
                                      "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                                      "mlp.down_proj.weight"};
  if (name.rfind("model.embed_tokens.", 0) == 0) return {0, 0, 0, name};
  const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) == 0) {
    const size_t dot = name.find('.', prefix.size());
    const std::string number = name.substr(prefix.size(), dot - prefix.size());
    const int64_t layer = std::all_of(number.begin(), number.end(), ::isdigit) && !number.empty() ? std::stoll(number) : 0;
    const std::string rest = dot == std::string::npos ? "" : name.substr(dot + 1);
    for (int k = 0; k < 9; ++k) {
      if (rest == kLayerOrder[k]) return {1, layer, k, name};
    }
    return {1, layer, 9, name};
  }
  if (name.rfind("model.norm.", 0) == 0) return {2, 0, 0, name};
  if (name.rfind("lm_head.", 0) == 0) return {3, 0, 0, name};
  return {4, 0, 0, name};
}

Status RequireEmptyOutput(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec) && !(fs::is_directory(dir, ec) && fs::is_empty(dir, ec))) {
    return Status::InvalidInput(dir + ": exists and is not empty; choose a new output directory");
  }
  return Env::Default()->CreateDirs(dir);
}

// The sizes config.json gives must be the ones the safetensors hold: checked
// from the tensors' headers alone, before anything is allocated from them
// (an absurd num_hidden_layers would otherwise size the tensor list).
Status CheckConfigAgainstWeights(const config::ModelConfig& m, const HfWeights& weights, const std::string& hf_dir) {
  const std::string config = hf_dir + "/config.json";
  auto mismatch = [&](const char* key, int64_t value, const std::string& held) {
    return Status::InvalidInput(config + ": " + key + ": " + std::to_string(value) + ", but " + held);
  };
  auto shape_of = [&](const std::string& name, size_t rank) -> Result<std::vector<int64_t>> {
    const StEntry* e = weights.Find(name);
    if (e == nullptr) return Status::InvalidInput(hf_dir + ": tensor " + name + " is missing");
    if (e->shape.size() != rank) {
      return Status::InvalidInput(hf_dir + ": tensor " + name + " has " + std::to_string(e->shape.size()) +
                                  " dimensions, expected " + std::to_string(rank));
    }
    return e->shape;
  };
  LATAM_ASSIGN_OR_RETURN(const std::vector<int64_t> embed, shape_of("model.embed_tokens.weight", 2));
  const auto held = [](const std::string& name, const std::vector<int64_t>& shape) {
    return name + " is " + WholeBlock(shape).ToString();
  };
  if (embed[0] != m.vocab_size()) {
    return mismatch("vocab_size", m.vocab_size(), held("model.embed_tokens.weight", embed));
  }
  if (embed[1] != m.dim()) return mismatch("hidden_size", m.dim(), held("model.embed_tokens.weight", embed));
  // The layers present: model.layers.<i>. for every i in [0, n) and no other.
  std::set<int64_t> layers;
  const std::string prefix = "model.layers.";
  for (const std::string& name : weights.names()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const size_t dot = name.find('.', prefix.size());
    const std::string number = name.substr(prefix.size(), dot - prefix.size());
    if (number.empty() || number.size() > 9 || !std::all_of(number.begin(), number.end(), ::isdigit)) {
      return Status::InvalidInput(hf_dir + ": tensor " + name + " has no layer number");
    }
    layers.insert(std::stoll(number));
  }
  const int64_t present = layers.empty() ? 0 : *layers.rbegin() + 1;
  if (static_cast<int64_t>(layers.size()) != present || present != m.n_layers()) {
    return mismatch("num_hidden_layers", m.n_layers(),
                    "the safetensors hold " + std::to_string(layers.size()) + " layers" +
                        (layers.empty() ? std::string() : " numbered up to " + std::to_string(present - 1)));
  }
  const int64_t head_dim = m.dim() / m.n_heads();
  LATAM_ASSIGN_OR_RETURN(const std::vector<int64_t> q, shape_of("model.layers.0.self_attn.q_proj.weight", 2));
  if (q[0] != m.n_heads() * head_dim) {
    return mismatch("num_attention_heads", m.n_heads(), held("model.layers.0.self_attn.q_proj.weight", q));
  }
  LATAM_ASSIGN_OR_RETURN(const std::vector<int64_t> k, shape_of("model.layers.0.self_attn.k_proj.weight", 2));
  if (k[0] != m.n_kv_heads() * head_dim) {
    return mismatch("num_key_value_heads", m.n_kv_heads(),
                    held("model.layers.0.self_attn.k_proj.weight", k) + " (head_dim " + std::to_string(head_dim) + ")");
  }
  LATAM_ASSIGN_OR_RETURN(const std::vector<int64_t> gate, shape_of("model.layers.0.mlp.gate_proj.weight", 2));
  if (gate[0] != m.ffn_dim()) {
    return mismatch("intermediate_size", m.ffn_dim(), held("model.layers.0.mlp.gate_proj.weight", gate));
  }
  return Status::Ok();
}

}  // namespace

bool CanonicalLess(const std::string& a, const std::string& b) { return SortKey(a) < SortKey(b); }

Status ExportHf(const std::string& checkpoint, const std::string& out_dir, const ExportOptions& options) {
  LATAM_ASSIGN_OR_RETURN(auto reader, CheckpointReader::Open(checkpoint));
  const Checkpoint& m = reader->manifest();
  std::vector<HfTensorSpec> specs;
  for (const TensorRecord& t : m.tensors()) {
    if (!IsMoment(t.name())) specs.push_back({t.name(), {t.shape().begin(), t.shape().end()}});
  }
  std::sort(specs.begin(), specs.end(),
            [](const HfTensorSpec& a, const HfTensorSpec& b) { return CanonicalLess(a.name, b.name); });
  LATAM_RETURN_IF_ERROR(RequireEmptyOutput(out_dir));
  auto produce = [&](const std::string& name, std::vector<float>* data) -> Status {
    const TensorRecord* t = reader->Find(name);
    const Block whole = WholeBlock({t->shape().begin(), t->shape().end()});
    data->resize(static_cast<size_t>(whole.numel()));
    return reader->Read(name, whole, data->data());
  };
  LATAM_RETURN_IF_ERROR(WriteHfWeights(out_dir, specs, options.dtype, produce, options.max_shard_bytes));

  int64_t bos = -1, eos = -1;
  if (!m.tokenizer_file().empty()) {
    const std::string tokenizer = reader->dir() + "/" + m.tokenizer_file();
    LATAM_ASSIGN_OR_RETURN(auto tok, data::Tokenizer::Load(tokenizer));
    if (auto id = tok->TokenId("<|begin_of_text|>")) bos = *id;
    if (auto id = tok->TokenId("<|end_of_text|>")) eos = *id;
    LATAM_RETURN_IF_ERROR(CopyFileAtomically(Env::Default(), tokenizer, out_dir + "/tokenizer.json")
                              .WithContext("cannot copy " + tokenizer + " to " + out_dir));
  }
  const std::string dtype = options.dtype == StDType::kBF16 ? "bfloat16" : "float32";
  return WriteFileAtomically(Env::Default(), out_dir + "/config.json", HfConfigJson(m.model(), dtype, bos, eos));
}

Status ImportHf(const std::string& hf_dir, const std::string& out_dir) {
  LATAM_ASSIGN_OR_RETURN(const HfConfig hf, ParseHfConfig(hf_dir + "/config.json"));
  LATAM_ASSIGN_OR_RETURN(auto weights, HfWeights::Open(hf_dir));
  LATAM_RETURN_IF_ERROR(CheckConfigAgainstWeights(hf.model, *weights, hf_dir));
  const ModelShape shape = ModelShape::FromConfig(hf.model);
  const std::vector<ParamSpec> specs = LlamaParameterSpecs(shape, ModelLayout::Single(shape));
  // Check every tensor before writing anything.
  for (const ParamSpec& p : specs) {
    const StEntry* e = weights->Find(p.name);
    if (e == nullptr) return Status::InvalidInput(hf_dir + ": tensor " + p.name + " is missing");
    std::vector<int64_t> want;
    for (int d = 0; d < p.global_shape.rank(); ++d) want.push_back(p.global_shape[d]);
    if (e->shape != want) {
      return Status::InvalidInput(hf_dir + ": tensor " + p.name + " has shape " + WholeBlock(e->shape).ToString() +
                                  ", config.json implies " + WholeBlock(want).ToString());
    }
  }
  LATAM_RETURN_IF_ERROR(RequireEmptyOutput(out_dir));
  Checkpoint index;
  LATAM_ASSIGN_OR_RETURN(auto writer, ShardFileWriter::Create(out_dir, RankFileName(0)));
  std::vector<char> raw;
  std::vector<float> widened;
  for (const ParamSpec& p : specs) {
    const StEntry* e = weights->Find(p.name);
    const Block whole = WholeBlock(e->shape);
    DType dtype = DType::F32;
    const void* data = nullptr;
    if (e->dtype == StDType::kF16) {
      widened.resize(static_cast<size_t>(whole.numel()));
      LATAM_RETURN_IF_ERROR(weights->ReadF32(p.name, widened.data()));
      data = widened.data();
    } else {
      raw.resize(static_cast<size_t>(e->bytes()));
      LATAM_RETURN_IF_ERROR(weights->ReadRaw(p.name, raw.data()));
      dtype = e->dtype == StDType::kBF16 ? DType::BF16 : DType::F32;
      data = raw.data();
    }
    LATAM_ASSIGN_OR_RETURN(const Shard shard, writer->Append(data, dtype, whole));
    TensorRecord* t = index.add_tensors();
    t->set_name(p.name);
    t->set_dtype(dtype);
    for (int64_t d : e->shape) t->add_shape(d);
    *t->add_shards() = shard;
  }
  LATAM_RETURN_IF_ERROR(writer->Close());
  LATAM_RETURN_IF_ERROR(
      WriteFileAtomically(Env::Default(), out_dir + "/" + RankIndexName(0), index.SerializeAsString()));

  Checkpoint header;
  header.set_format_version(kFormatVersion);
  header.set_step(0);
  header.set_consumed_samples(0);
  *header.mutable_model() = hf.model;
  Layout* l = header.mutable_layout();
  l->set_tensor(1);
  l->set_pipeline(1);
  l->set_data(1);
  l->set_virtual_stages(1);
  l->set_zero_stage(0);
  header.mutable_optimizer()->set_step(0);
  header.mutable_optimizer()->set_has_moments(false);
  const std::string tokenizer = hf_dir + "/tokenizer.json";
  if (fs::exists(tokenizer)) {
    LATAM_RETURN_IF_ERROR(CopyFileAtomically(Env::Default(), tokenizer, out_dir + "/tokenizer.json")
                              .WithContext("cannot copy " + tokenizer + " to " + out_dir));
    header.set_tokenizer_file("tokenizer.json");
  }
  return WriteManifest(out_dir, 1, header);
}

}  // namespace latam::ckpt
