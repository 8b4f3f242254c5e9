#include "trainer/plan.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data/sampler.h"
#include "model/layout.h"
#include "model/model.h"
#include "model/optimizer.h"
#include "model/parameters.h"
#include "parallel/pipeline.h"
#include "trainer/step_time.h"

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

// Matmul parameters of one layer as one tensor-parallel rank holds them
// (replicated KV heads counted on every replica: each computes them).
int64_t LocalLayerMatmulParameters(const ModelShape& s, const ModelLayout& l) {
  return s.dim * (l.heads + 2 * l.kv_heads) * s.head_dim + l.heads * s.head_dim * s.dim + 3 * l.ffn * s.dim;
}


}  // namespace

double TrainingFlopsPerToken(const ModelShape& s, int64_t seq_len, double attention_fraction) {
  return 6.0 * static_cast<double>(MatmulParameters(s)) + 6.0 * static_cast<double>(s.n_layers) *
                                                              static_cast<double>(seq_len) *
                                                              static_cast<double>(s.attn_dim()) * attention_fraction;
}

// The per-rank state of the parameters: what the optimizer and its
// ParameterSet allocate (AdamWOptimizer::MemoryPerRank, the single source),
// for `parameters` rounded up to a multiple of the data-parallel size (the
// per-bucket padding adds at most D elements per bucket).
ParameterMemory ParameterMemoryPerRank(int64_t parameters, bool bf16, int zero_stage, int64_t data_parallel,
                                       int64_t grad_arena_elems) {
  const int64_t d = std::max<int64_t>(data_parallel, 1);
  const int64_t padded = (parameters + d - 1) / d * d;
  const OptimizerMemory o = AdamWOptimizer::MemoryPerRank(padded, static_cast<int>(d), zero_stage,
                                                          bf16 ? DType::kBF16 : DType::kF32, grad_arena_elems);
  ParameterMemory m;
  m.weights = static_cast<double>(o.weights);
  m.master_weights = static_cast<double>(o.master);
  m.gradients = static_cast<double>(o.grads);
  m.optimizer = static_cast<double>(o.moments);
  return m;
}

namespace {

// What PlanJson and PlanStepInput share: the largest rank's parameters and
// activations, and the step-time model's input.
struct PlanCore {
  int64_t per_rank = 0;
  double act_bytes = 0.0;
  int64_t bucket_elems = 0;
  int64_t grad_arena_elems = 0;  // ZeRO-2: the largest rank's pooled gradient arena
  bool bf16 = false;
  double flops_per_token = 0.0;
  // The model's extra forward FLOPs per token under train.recompute: the sum
  // over pipeline stages and tensor-parallel ranks of RecomputeFlopsPerToken.
  double recompute_flops_per_token = 0.0;
  StepInput step;
};

Result<PlanCore> MakePlanCore(const Config& config, double attention_fraction) {
  ValidationOptions vo;
  vo.world_size = 0;
  vo.check_files = false;
  LATAM_RETURN_IF_ERROR(ValidateConfig(config, vo));
  PlanCore core;
  const ModelShape s = ModelShape::FromConfig(config.model());
  const auto& p = config.parallel();
  const int64_t tp = p.tensor(), pp = p.pipeline(), dp = DataParallelSize(config, 0), cp = p.context();
  // Gradients are reduced, and ZeRO shards, over data x context replicas.
  const int64_t replicas = dp * cp;
  const ComputeSettings compute = ComputeSettingsOf(config);
  core.bf16 = compute.dtype == DType::kBF16;
  // As the engine does: ZeRO-2 gives every layer a bucket of its own.
  core.bucket_elems = p.zero_stage() == 2 ? 1 : static_cast<int64_t>(p.grad_bucket_mb() * 1e6 / sizeof(float));

  const int64_t micro = config.train().micro_batch_size();
  const int micro_batches = static_cast<int>(config.train().global_batch_size() / (micro * dp));
  // Context-parallel rank 0 stands for all: every rank holds the same rows.
  ActivationOptions act = TrainingActivationOptions(config, 0);
  act.cpu_threads = 1;
  const int64_t seq_len = config.data().seq_len();  // act.seq_len is a rank's share
  const int64_t rows = micro * act.seq_len;
  core.flops_per_token = TrainingFlopsPerToken(s, seq_len, attention_fraction);
  StepInput& in = core.step;
  in.tp = static_cast<int>(tp);
  in.pp = static_cast<int>(pp);
  in.dp = static_cast<int>(replicas);
  in.context = static_cast<int>(cp);
  in.virtual_stages = p.virtual_stages();
  in.zero_stage = p.zero_stage();
  in.micro_batches = micro_batches;
  in.tokens_per_micro_batch = rows;
  in.dim = s.dim;
  in.activation_bytes = static_cast<double>(DTypeSize(act.dtype));
  // The ZeRO all-gather moves the weights' compute copy.
  in.weight_bytes = static_cast<double>(DTypeSize(compute.dtype));
  in.recompute_full = compute.recompute == Recompute::kFull;
  in.recompute_selective = compute.recompute == Recompute::kSelective;
  in.sequence_parallel = act.sequence_parallel;
  in.tokens_per_step = static_cast<int64_t>(config.train().global_batch_size()) * seq_len;
  in.model_flops_per_step = core.flops_per_token * static_cast<double>(in.tokens_per_step);

  // Every pipeline stage (tensor-parallel rank 0 of it): the largest rank's
  // parameters and activations (those of the slots its pipeline schedule
  // keeps in flight; usually the first or the last stage, which add the
  // embedding and the head), and each stage's load for the step-time model.
  for (int stage = 0; stage < static_cast<int>(pp); ++stage) {
    const ModelLayout layout =
        ModelLayout::Make(s, static_cast<int>(tp), 0, static_cast<int>(pp), stage, p.virtual_stages(),
                          StageSplit::FromConfig(p));
    const std::vector<ParamSpec> specs = LlamaParameterSpecs(s, layout);
    const int64_t params = CountParameters(specs);
    core.per_rank = std::max(core.per_rank, params);
    if (p.zero_stage() == 2) {
      core.grad_arena_elems =
          std::max(core.grad_arena_elems, ParameterSet::GradArenaElemsFor(specs, replicas, core.bucket_elems, true));
    }
    act.slots =
        SlotsNeeded(BuildSchedule(static_cast<int>(pp), stage, p.virtual_stages(), micro_batches), p.virtual_stages());
    core.act_bytes = std::max(core.act_bytes, static_cast<double>(ActivationBytes(s, layout, act)));

    StageLoad load;
    load.stage = stage;
    for (const ChunkInfo& c : layout.chunks) {
      load.layers += c.layer_end - c.layer_begin;
      load.sends_forward += c.last ? 0 : 1;
      load.sends_backward += c.first ? 0 : 1;
    }
    load.embedding = layout.holds_embedding();
    load.head = layout.holds_head();
    const double per_layer = 6.0 * static_cast<double>(LocalLayerMatmulParameters(s, layout)) +
                             6.0 * static_cast<double>(seq_len) * static_cast<double>(layout.heads * s.head_dim) *
                                 attention_fraction;
    const double recompute = RecomputeFlopsPerToken(s, layout, compute.recompute, seq_len);
    core.recompute_flops_per_token += recompute * static_cast<double>(tp);
    double per_token = static_cast<double>(load.layers) * per_layer + recompute;
    if (load.head) per_token += 6.0 * static_cast<double>(layout.vocab * s.dim);
    load.flops_per_micro_batch = per_token * static_cast<double>(rows);
    // Attention: 6 x T x (Hq hd) per token and layer, 2 more under FULL
    // recompute (its forward runs again), scaled by the visible pairs.
    const double attention_per_token = (compute.recompute == Recompute::kFull ? 8.0 : 6.0) *
                                       static_cast<double>(seq_len) *
                                       static_cast<double>(layout.heads * s.head_dim) * attention_fraction;
    load.attention_flops_per_micro_batch =
        static_cast<double>(load.layers) * attention_per_token * static_cast<double>(rows);
    in.kv_width = 2 * layout.kv_heads * s.head_dim;
    load.recompute_flops_per_micro_batch = recompute * static_cast<double>(rows);
    load.parameters = params;
    // The bucket reduced last: the embedding's own on the first stage (its
    // gradient is final at the very end), else the first layers' bucket.
    if (load.embedding) {
      load.last_bucket_parameters = layout.vocab * s.dim;
    } else {
      const int64_t layer_params = load.layers > 0 ? params / load.layers : params;
      const int64_t layers_per_bucket =
          core.bucket_elems <= 0 ? load.layers
                                 : std::max<int64_t>(1, (core.bucket_elems + layer_params - 1) / layer_params);
      load.last_bucket_parameters = std::min(params, layers_per_bucket * layer_params);
    }
    in.stages.push_back(load);
  }
  return core;
}

}  // namespace

Result<StepInput> PlanStepInput(const Config& config) {
  LATAM_ASSIGN_OR_RETURN(PlanCore core, MakePlanCore(config, 1.0));
  return core.step;
}

Result<std::string> PlanJson(const Config& config, const PlanOptions& options) {
  if (!(options.attention_fraction > 0.0 && options.attention_fraction <= 1.0)) {
    return Status::InvalidInput("--attention-fraction must be in (0, 1] (got " +
                                std::to_string(options.attention_fraction) + ")");
  }
  LATAM_ASSIGN_OR_RETURN(const PlanCore core, MakePlanCore(config, options.attention_fraction));
  Hardware hw;
  if (!options.gpu.empty()) {
    LATAM_ASSIGN_OR_RETURN(hw, MakeHardware(options.gpu, options.gpus_per_node, options.network));
  }
  const auto& p = config.parallel();
  const ModelShape s = ModelShape::FromConfig(config.model());
  const int64_t tp = core.step.tp, pp = core.step.pp, cp = core.step.context, replicas = core.step.dp;
  const int64_t dp = replicas / cp;
  const int64_t per_rank = core.per_rank;
  const double act_bytes = core.act_bytes;
  const double flops = core.flops_per_token;
  const int64_t tokens_per_step = core.step.tokens_per_step;
  const ParameterMemory pm =
      ParameterMemoryPerRank(per_rank, core.bf16, p.zero_stage(), replicas, core.grad_arena_elems);
  const double memory = pm.total() + act_bytes;

  nlohmann::ordered_json j;
  j["parameters"] = s.ParameterCount();
  j["parameters_per_rank"] = per_rank;
  j["memory_bytes_per_rank"] = static_cast<int64_t>(memory);
  j["memory_breakdown"] = {{"weights", static_cast<int64_t>(pm.weights)},
                           {"master_weights", static_cast<int64_t>(pm.master_weights)},
                           {"gradients", static_cast<int64_t>(pm.gradients)},
                           {"optimizer", static_cast<int64_t>(pm.optimizer)},
                           {"activations", static_cast<int64_t>(act_bytes)}};
  j["flops_per_token"] = flops;
  j["attention_fraction"] = options.attention_fraction;
  j["layout"] = {{"tensor", tp},
                 {"context", cp},
                 {"pipeline", pp},
                 {"data", dp},
                 {"virtual_stages", p.virtual_stages()},
                 {"zero_stage", p.zero_stage()},
                 {"world_size", tp * cp * pp * dp}};
  j["precision"] = config::TrainConfig::Precision_Name(config.train().precision());
  j["attention"] = config::TrainConfig::Attention_Name(config.train().attention());
  j["recompute"] = config::TrainConfig::Recompute_Name(config.train().recompute());
  // What each recompute choice would cost with everything else unchanged.
  nlohmann::ordered_json choices;
  for (const auto r : {config::TrainConfig::NONE, config::TrainConfig::SELECTIVE, config::TrainConfig::FULL}) {
    Config other = config;
    other.mutable_train()->set_recompute(r);
    LATAM_ASSIGN_OR_RETURN(const PlanCore c, MakePlanCore(other, options.attention_fraction));
    choices[config::TrainConfig::Recompute_Name(r)] = {
        {"activations", static_cast<int64_t>(c.act_bytes)},
        {"memory_bytes_per_rank", static_cast<int64_t>(pm.total() + c.act_bytes)},
        {"extra_flops_per_token", c.recompute_flops_per_token},
        {"extra_flops_fraction", c.recompute_flops_per_token / c.flops_per_token}};
  }
  j["recompute_choices"] = choices;
  j["micro_batch_size"] = config.train().micro_batch_size();
  j["micro_batches_per_step"] = core.step.micro_batches;
  j["seq_len"] = config.data().seq_len();
  j["tokens_per_step"] = tokens_per_step;
  if (!options.gpu.empty()) {
    const double needed = memory + hw.reserved_bytes;
    j["memory_capacity_bytes"] = static_cast<int64_t>(hw.capacity_bytes);
    j["memory_reserved_bytes"] = static_cast<int64_t>(hw.reserved_bytes);
    j["fits"] = needed <= hw.capacity_bytes;
    j["headroom_fraction"] = 1.0 - needed / hw.capacity_bytes;
    j["step_time"] = StepTimeJson(StepModel(core.step, hw), hw);
  }
  return j.dump();
}

Result<double> EstimateAttentionFraction(const Config& config, int samples) {
  const auto& d = config.data();
  const int64_t seq_len = d.seq_len();
  std::vector<std::unique_ptr<data::TokenDataset>> sets;
  std::vector<double> weights;
  std::vector<uint64_t> windows;
  for (int i = 0; i < d.train_size(); ++i) {
    LATAM_ASSIGN_OR_RETURN(auto ds, data::TokenDataset::Open(d.train(i).path(), static_cast<int>(seq_len),
                                                             config.model().vocab_size(), false));
    weights.push_back(d.train(i).weight());
    windows.push_back(ds->num_windows());
    sets.push_back(std::move(ds));
  }
  if (sets.empty()) return Status::InvalidInput("data.train: at least one training dataset is required");
  const data::MixtureSampler sampler(weights, windows, d.seed());
  std::vector<int32_t> ids(static_cast<size_t>(seq_len)), targets(ids.size()), docs(ids.size());
  double pairs = 0.0;
  for (int k = 0; k < samples; ++k) {
    const data::MixtureSampler::Draw draw = sampler.Sample(static_cast<uint64_t>(k));
    LATAM_RETURN_IF_ERROR(sets[static_cast<size_t>(draw.dataset)]->ReadWindow(draw.window, ids.data(),
                                                                              targets.data(), docs.data()));
    for (int64_t t = 0; t < seq_len; ++t) pairs += static_cast<double>(t - docs[static_cast<size_t>(t)] + 1);
  }
  return pairs / (static_cast<double>(samples) * static_cast<double>(seq_len) * static_cast<double>(seq_len + 1) / 2.0);
}

}  // namespace latam
