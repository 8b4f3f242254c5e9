// LoRA's names, config checks and parameter specs (model/lora.h): no
// kernels, so that the config tools (and the fuzzers) link without them.
#include "model/lora.h"

#include <cmath>
#include <set>

#include "core/check.h"

namespace latam {

namespace {

constexpr LoraTarget kAllTargets[kNumLoraTargets] = {LoraTarget::kQ,    LoraTarget::kK,  LoraTarget::kV,
                                                     LoraTarget::kO,    LoraTarget::kGate, LoraTarget::kUp,
                                                     LoraTarget::kDown};

}  // namespace

const char* LoraTargetName(LoraTarget t) {
  switch (t) {
    case LoraTarget::kQ: return "q_proj";
    case LoraTarget::kK: return "k_proj";
    case LoraTarget::kV: return "v_proj";
    case LoraTarget::kO: return "o_proj";
    case LoraTarget::kGate: return "gate_proj";
    case LoraTarget::kUp: return "up_proj";
    case LoraTarget::kDown: return "down_proj";
  }
  return "?";
}

const char* LoraTargetModule(LoraTarget t) {
  switch (t) {
    case LoraTarget::kQ: return "self_attn.q_proj";
    case LoraTarget::kK: return "self_attn.k_proj";
    case LoraTarget::kV: return "self_attn.v_proj";
    case LoraTarget::kO: return "self_attn.o_proj";
    case LoraTarget::kGate: return "mlp.gate_proj";
    case LoraTarget::kUp: return "mlp.up_proj";
    case LoraTarget::kDown: return "mlp.down_proj";
  }
  return "?";
}

bool IsRowParallel(LoraTarget t) { return t == LoraTarget::kO || t == LoraTarget::kDown; }

Status ValidateAdapterConfig(const config::Config& config) {
  if (!config.has_adapter() || config.adapter().kind() == config::AdapterConfig::NONE) return Status::Ok();
  const auto& a = config.adapter();
  const auto& m = config.model();
  if (a.kind() == config::AdapterConfig::QLORA) {
    return Status::InvalidInput("adapter.kind: QLORA (an NF4-quantised base) is not available in training yet; "
                                "use LORA");
  }
  const int64_t limit = std::min<int64_t>(m.dim(), m.ffn_dim());
  if (a.rank() < 1 || a.rank() > limit) {
    return Status::InvalidInput("adapter.rank: " + std::to_string(a.rank()) + " is outside [1, " +
                                std::to_string(limit) + "] (min of model.dim and model.ffn_dim)");
  }
  if (!std::isfinite(a.alpha()) || a.alpha() <= 0.0) {
    return Status::InvalidInput("adapter.alpha: " + std::to_string(a.alpha()) + " must be positive and finite");
  }
  if (a.dropout() != 0.0) {
    return Status::InvalidInput("adapter.dropout: " + std::to_string(a.dropout()) +
                                ": adapter dropout is not implemented yet; set it to 0");
  }
  if (a.targets_size() == 0) {
    return Status::InvalidInput("adapter.targets: empty; name projections among q_proj k_proj v_proj o_proj "
                                "gate_proj up_proj down_proj");
  }
  std::set<std::string> seen;
  for (int i = 0; i < a.targets_size(); ++i) {
    const std::string& name = a.targets(i);
    const std::string field = std::string("adapter.targets[").append(std::to_string(i)).append("]");
    bool known = false;
    for (LoraTarget t : kAllTargets) known = known || name == LoraTargetName(t);
    if (!known) {
      return Status::InvalidInput(field + ": '" + name +
                                  "' is not a projection of this model (q_proj k_proj v_proj o_proj gate_proj "
                                  "up_proj down_proj)");
    }
    if (!seen.insert(name).second) return Status::InvalidInput(field + ": '" + name + "' is named twice");
  }
  return Status::Ok();
}

LoraOptions LoraOptionsFromConfig(const config::Config& config) {
  LoraOptions o;
  if (!config.has_adapter() || config.adapter().kind() == config::AdapterConfig::NONE) return o;
  o.rank = config.adapter().rank();
  o.alpha = config.adapter().alpha();
  for (const std::string& name : config.adapter().targets()) {
    for (LoraTarget t : kAllTargets) {
      if (name == LoraTargetName(t)) o.targets[static_cast<size_t>(t)] = true;
    }
  }
  return o;
}

std::string LoraParamName(int64_t layer, LoraTarget t, bool b) {
  return LayerParamName(layer, LoraTargetModule(t)) + (b ? ".lora_B.weight" : ".lora_A.weight");
}

bool LoraGradIsTpPartial(const std::string& name) {
  // Column-parallel targets: A's gradient; row-parallel targets: B's.
  const bool a = name.size() > 14 && name.compare(name.size() - 14, 14, ".lora_A.weight") == 0;
  const bool b = name.size() > 14 && name.compare(name.size() - 14, 14, ".lora_B.weight") == 0;
  if (!a && !b) return false;
  const bool row = name.find(".o_proj.") != std::string::npos || name.find(".down_proj.") != std::string::npos;
  return row ? b : a;
}

std::vector<ParamSpec> LoraParameterSpecs(const ModelShape& s, const ModelLayout& l, const LoraOptions& lora) {
  std::vector<ParamSpec> specs;
  if (!lora.enabled()) return specs;
  const int64_t r = lora.rank, hd = s.head_dim, dim = s.dim;
  const bool first_tp = l.tp_rank == 0;
  const bool first_kv_replica = l.tp_rank % l.kv_replicas == 0;
  for (const ChunkInfo& c : l.chunks) {
    for (int64_t layer = c.layer_begin; layer < c.layer_end; ++layer) {
      for (LoraTarget t : kAllTargets) {
        if (!lora.has(t)) continue;
        // The base layer's global [out, in] and this rank's block of it.
        int64_t out = 0, in = dim, local = 0, offset = 0;
        switch (t) {
          case LoraTarget::kQ: out = s.n_heads * hd, local = l.heads * hd, offset = l.head_offset * hd; break;
          case LoraTarget::kK:
          case LoraTarget::kV: out = s.n_kv_heads * hd, local = l.kv_heads * hd, offset = l.kv_offset * hd; break;
          case LoraTarget::kO: out = dim, in = s.n_heads * hd, local = l.heads * hd, offset = l.head_offset * hd; break;
          case LoraTarget::kGate:
          case LoraTarget::kUp: out = s.ffn_dim, local = l.ffn, offset = l.ffn_offset; break;
          case LoraTarget::kDown: out = dim, in = s.ffn_dim, local = l.ffn, offset = l.ffn_offset; break;
        }
        ParamSpec a, b;
        a.name = LoraParamName(layer, t, false);
        a.init_std = 1.0 / std::sqrt(static_cast<double>(in));
        a.weight_decay = true;
        a.global_shape = Shape{r, in};
        b.name = LoraParamName(layer, t, true);
        b.zero_init = true;
        b.init_std = 1.0;  // unused: zero_init
        b.weight_decay = true;
        b.global_shape = Shape{out, r};
        if (IsRowParallel(t)) {
          // A split by columns like W; B replicated.
          a.shape = Shape{r, local};
          a.shard_dim = 1;
          a.shard_offset = offset;
          b.shape = Shape{out, r};
          b.counted = first_tp;
        } else {
          // A replicated; B split by rows like W.
          a.shape = Shape{r, in};
          a.counted = first_tp;
          b.shape = Shape{local, r};
          b.shard_dim = 0;
          b.shard_offset = offset;
          if (t == LoraTarget::kK || t == LoraTarget::kV) {
            b.kv_replica = l.kv_replicas > 1;
            b.counted = first_kv_replica;
          }
        }
        specs.push_back(a);
        specs.push_back(b);
      }
    }
  }
  return specs;
}

}  // namespace latam
