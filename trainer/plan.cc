#include "trainer/plan.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "trainer/model.h"
#include "trainer/parameters.h"

namespace latam {

namespace {

// Parameters held by one rank of pipeline stage `stage` (TP-sharded).
int64_t StageParameters(const ModelShape& s, int64_t tp, int64_t pp, int64_t stage) {
  const int64_t kv_per_rank = s.n_kv_heads >= tp ? s.n_kv_heads / tp : 1;  // replicated when fewer than TP
  const int64_t layer = 2 * s.dim                                          // norms (replicated)
                        + (s.n_heads / tp) * s.head_dim * s.dim            // q
                        + 2 * kv_per_rank * s.head_dim * s.dim             // k, v
                        + s.dim * (s.n_heads / tp) * s.head_dim            // o
                        + 3 * (s.ffn_dim / tp) * s.dim;                    // gate, up, down
  int64_t n = (s.n_layers / pp) * layer;
  const int64_t vocab_shard = (s.vocab / tp) * s.dim;
  if (stage == 0) n += vocab_shard;
  if (stage == pp - 1) {
    n += s.dim;  // final norm
    // An untied head lives on the last stage; a tied one is held there as a
    // copy of the embedding when the pipeline has more than one stage.
    if (!s.tie_embeddings || pp > 1) n += vocab_shard;
  }
  return n;
}

int64_t MatmulParameters(const ModelShape& s) {
  const int64_t per_layer = s.qkv_dim() * s.dim + s.dim * s.attn_dim() + 3 * s.ffn_dim * s.dim;
  return s.n_layers * per_layer + s.vocab * s.dim;  // + LM head
}

}  // namespace

Result<std::string> PlanJson(const Config& config) {
  ValidationOptions options;
  options.world_size = 0;
  options.check_files = false;
  LATAM_RETURN_IF_ERROR(ValidateConfig(config, options));
  const ModelShape s = ModelShape::FromConfig(config.model());
  const auto& p = config.parallel();
  const int64_t tp = p.tensor(), pp = p.pipeline(), dp = DataParallelSize(config, 0);
  const bool bf16 = config.train().precision() == "bf16";

  int64_t per_rank = 0;
  for (int64_t stage : {int64_t{0}, pp - 1}) per_rank = std::max(per_rank, StageParameters(s, tp, pp, stage));

  // Activations: the local model of one rank (TP-local widths, its layers).
  ModelShape local = s;
  local.n_layers = s.n_layers / pp;
  local.n_heads = s.n_heads / tp;
  local.n_kv_heads = s.n_kv_heads >= tp ? s.n_kv_heads / tp : 1;
  local.ffn_dim = s.ffn_dim / tp;
  local.vocab = s.vocab / tp;
  ActivationOptions act;
  act.micro_batch = config.train().micro_batch_size();
  act.seq_len = config.data().seq_len();
  act.recompute = config.train().recompute();
  act.cpu_threads = 1;
  const int64_t micro_batches = config.train().global_batch_size() / (act.micro_batch * dp);
  const int64_t in_flight = std::min<int64_t>(pp, std::max<int64_t>(1, micro_batches));
  const double act_bytes =
      static_cast<double>(ActivationBytes(local, act)) * static_cast<double>(in_flight) * (bf16 ? 0.5 : 1.0);

  const double weights = static_cast<double>(per_rank) * (bf16 ? 2.0 : 4.0);
  const double grads = static_cast<double>(per_rank) * 4.0;
  const double optimizer = static_cast<double>(per_rank) * ((bf16 ? 12.0 : 8.0) / (p.zero_stage() == 1 ? dp : 1));
  const double flops = 6.0 * static_cast<double>(MatmulParameters(s)) + 6.0 * static_cast<double>(s.n_layers) *
                                                                            static_cast<double>(act.seq_len) *
                                                                            static_cast<double>(s.attn_dim());

  nlohmann::ordered_json j;
  j["parameters"] = s.ParameterCount();
  j["parameters_per_rank"] = per_rank;
  j["memory_bytes_per_rank"] = static_cast<int64_t>(weights + grads + optimizer + act_bytes);
  j["memory_breakdown"] = {{"weights", static_cast<int64_t>(weights)},
                           {"gradients", static_cast<int64_t>(grads)},
                           {"optimizer", static_cast<int64_t>(optimizer)},
                           {"activations", static_cast<int64_t>(act_bytes)}};
  j["flops_per_token"] = flops;
  j["layout"] = {{"tensor", tp},
                 {"pipeline", pp},
                 {"data", dp},
                 {"virtual_stages", p.virtual_stages()},
                 {"zero_stage", p.zero_stage()},
                 {"world_size", tp * pp * dp}};
  j["precision"] = config.train().precision();
  j["micro_batch_size"] = act.micro_batch;
  j["seq_len"] = act.seq_len;
  j["tokens_per_step"] = static_cast<int64_t>(config.train().global_batch_size()) * act.seq_len;
  return j.dump();
}

}  // namespace latam
