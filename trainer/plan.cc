#include "trainer/plan.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "model/layout.h"
#include "model/model.h"
#include "model/parameters.h"
#include "parallel/pipeline.h"

namespace latam {

namespace {

int64_t CountParameters(const std::vector<ParamSpec>& specs) {
  int64_t n = 0;
  for (const ParamSpec& p : specs) n += p.shape.numel();
  return n;
}

int64_t MatmulParameters(const ModelShape& s) {
  const int64_t per_layer = s.qkv_dim() * s.dim + s.dim * s.attn_dim() + 3 * s.ffn_dim * s.dim;
  return s.n_layers * per_layer + s.vocab * s.dim;  // + LM head
}

}  // namespace

double TrainingFlopsPerToken(const ModelShape& s, int64_t seq_len) {
  return 6.0 * static_cast<double>(MatmulParameters(s)) +
         6.0 * static_cast<double>(s.n_layers) * static_cast<double>(seq_len) * static_cast<double>(s.attn_dim());
}

Result<std::string> PlanJson(const Config& config) {
  ValidationOptions options;
  options.world_size = 0;
  options.check_files = false;
  LATAM_RETURN_IF_ERROR(ValidateConfig(config, options));
  const ModelShape s = ModelShape::FromConfig(config.model());
  const auto& p = config.parallel();
  const int64_t tp = p.tensor(), pp = p.pipeline(), dp = DataParallelSize(config, 0);
  const ComputeSettings compute = ComputeSettingsOf(config);
  const bool bf16 = compute.dtype == DType::kBF16;

  const int64_t micro = config.train().micro_batch_size();
  const int micro_batches = static_cast<int>(config.train().global_batch_size() / (micro * dp));
  ActivationOptions act;
  act.micro_batch = micro;
  act.seq_len = config.data().seq_len();
  act.recompute = compute.recompute;
  act.sequence_parallel = p.sequence_parallel();
  act.cpu_threads = 1;
  if (compute.device == Device::kCUDA) {
    act.device = Device::kCUDA;
    act.dtype = compute.dtype;
    act.attention = compute.attention;
  }
  // The largest rank is a tensor-parallel rank of some pipeline stage (the
  // first and last add the embedding and the head, but with uneven stages a
  // middle one may hold more layers); its activations are those of the slots
  // its pipeline schedule keeps in flight.
  int64_t per_rank = 0;
  double act_bytes = 0.0;
  for (int stage = 0; stage < static_cast<int>(pp); ++stage) {
    const ModelLayout layout = ModelLayout::Make(s, static_cast<int>(tp), 0, static_cast<int>(pp), stage,
                                                 p.virtual_stages(), StageSplit::FromConfig(p));
    per_rank = std::max(per_rank, CountParameters(LlamaParameterSpecs(s, layout)));
    act.slots =
        SlotsNeeded(BuildSchedule(static_cast<int>(pp), stage, p.virtual_stages(), micro_batches), p.virtual_stages());
    act_bytes = std::max(act_bytes, static_cast<double>(ActivationBytes(s, layout, act)));
  }

  const double weights = static_cast<double>(per_rank) * (bf16 ? 6.0 : 4.0);
  const double grads = static_cast<double>(per_rank) * 4.0;
  const double optimizer = static_cast<double>(per_rank) * 8.0 / static_cast<double>(p.zero_stage() == 1 ? dp : 1);
  const double flops = TrainingFlopsPerToken(s, act.seq_len);

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
  j["precision"] = config::TrainConfig::Precision_Name(config.train().precision());
  j["attention"] = config::TrainConfig::Attention_Name(config.train().attention());
  j["micro_batch_size"] = act.micro_batch;
  j["micro_batches_per_step"] = micro_batches;
  j["seq_len"] = act.seq_len;
  j["tokens_per_step"] = static_cast<int64_t>(config.train().global_batch_size()) * act.seq_len;
  return j.dump();
}

}  // namespace latam
