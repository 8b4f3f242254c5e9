#include "trainer/engine.h"

#include <chrono>

#include "data/sampler.h"

namespace latam {

Engine::Engine(const Config& config, ProcessGrid* grid, Stream stream)
    : config_(config),
      grid_(grid),
      health_(config.train().spike_zscore(), config.train().spike_window()) {
  const auto& p = config.parallel();
  const GridShape& g = grid->shape();
  LATAM_CHECK(g.tensor == p.tensor() && g.pipeline == p.pipeline() && g.context == p.context(),
              "grid " << g.tensor << "x" << g.context << "x" << g.pipeline << " does not match the config");
  const ModelShape shape = ModelShape::FromConfig(config.model());
  const ModelLayout layout = ModelLayout::Make(shape, g.tensor, grid->tp_rank(), g.pipeline, grid->pp_rank(),
                                               p.virtual_stages(), StageSplit::FromConfig(p));
  const int64_t micro = config.train().micro_batch_size();
  micro_batches_ = static_cast<int>(config.train().global_batch_size() / (micro * g.data));

  // Ranks sharing replicated KV heads, and the two copies of a tied embedding.
  kv_group_ = grid->tp().Split(grid->tp_rank() / layout.kv_replicas, grid->tp_rank(), "kv");
  const bool embedding_holder =
      shape.tie_embeddings && g.pipeline > 1 && (grid->pp_rank() == 0 || grid->pp_rank() == g.pipeline - 1);
  embedding_group_ = grid->pp().Split(embedding_holder ? 0 : -1, grid->pp_rank(), "embedding");

  ActivationOptions act = TrainingActivationOptions(config, grid->cp_rank());
  if (act.device == Device::kCUDA) act.stream = stream;
  context_ = act.context;
  // ZeRO-1: the optimizer holds the f32 master weights (sharded); the
  // parameter set keeps only the compute copy.
  act.fp32_weights = p.zero_stage() == 0;
  // ZeRO-2: gradient buckets in a two-slot pool, reduced after every
  // micro-batch (see AdamWOptimizer).
  act.pooled_grads = p.zero_stage() == 2;
  // LoRA: the base is frozen and the optimizer updates the adapter only
  // (ZeRO 0 or 1 over the adapter's own parameter set; validated).
  act.lora = LoraOptionsFromConfig(config);
  const bool adapter = act.lora.enabled();
  act.slots =
      SlotsNeeded(BuildSchedule(g.pipeline, grid->pp_rank(), p.virtual_stages(), micro_batches_), p.virtual_stages());
  ModelComms comms;
  comms.tp = &grid->tp();
  comms.kv_replicas = layout.kv_replicas > 1 ? kv_group_.get() : nullptr;
  comms.cp = &grid->cp();
  const int zero = p.zero_stage();
  // ZeRO-2 gives every layer a bucket of its own (1 element closes each):
  // the pool's slots are the largest bucket's size, and a bucket spanning
  // layers of two virtual-stage chunks would be filled by interleaved
  // backward passes.
  const int64_t bucket_elems =
      zero == 2 ? 1 : static_cast<int64_t>(p.grad_bucket_mb() * 1e6 / sizeof(float));
  // Context-parallel ranks hold the same parameters and compute gradients
  // of different tokens: gradients are summed, and ZeRO shards, over the
  // D x C replicas.
  const int replicas = g.data * g.context;
  model_ = std::make_unique<LlamaModel>(shape, layout, act, comms, zero >= 1 ? replicas : 1, bucket_elems);
  executor_ = std::make_unique<PipelineExecutor>(model_.get(), &grid->pp(), micro_batches_);
  OptimizerComms oc;
  oc.dp = &grid->replicas();
  oc.norm_group = zero >= 1 ? &grid->world() : &grid->model_parallel();
  ParameterSet* trained = adapter ? model_->adapter_parameters() : &model_->parameters();
  optimizer_ = std::make_unique<AdamWOptimizer>(trained, config.optimizer(), zero, oc);
  // The frozen base draws its weights like a model without an adapter (a
  // checkpoint or an imported model then replaces them).
  if (adapter) model_->parameters().InitWeights(config.train().seed());
  optimizer_->InitWeights(config.train().seed());
  if (adapter) {
    // The model reports the base's tensors, which this optimizer does not
    // hold: the adapter's gradients (small) are reduced after the pipeline,
    // and its ZeRO-1 all-gathers completed before the next forward.
    adapter_tensors_.resize(trained->size());
    for (size_t i = 0; i < adapter_tensors_.size(); ++i) adapter_tensors_[i] = i;
    return;
  }
  // ZeRO-1's parameter all-gathers run into the next forward, which waits
  // for each bucket only when it reaches its weights.
  model_->OnWeightsNeeded([this](const std::vector<size_t>& tensors) { optimizer_->WaitForWeights(tensors); });
  // Gradients go to the data-parallel reduction as the backward pass
  // completes them, except a tied embedding split over the first and last
  // stages: its two copies are summed after the pipeline, then reduced.
  if (embedding_group_ != nullptr) {
    tied_embedding_ = model_->parameters().table().IndexOf("model.embed_tokens.weight");
  }
  model_->OnGradientsNeeded([this](const std::vector<size_t>& tensors) { optimizer_->GradientsNeeded(tensors); });
  model_->OnGradientsFinal([this](const std::vector<size_t>& tensors, bool last_micro_batch) {
    if (embedding_group_ == nullptr) {
      optimizer_->GradientsFinal(tensors, last_micro_batch);
      return;
    }
    std::vector<size_t> now;
    for (size_t t : tensors) {
      if (t != tied_embedding_) now.push_back(t);
    }
    optimizer_->GradientsFinal(now, last_micro_batch);
  });
}

Status Engine::FetchLocal(const SampleFn& sample, uint64_t index, int32_t* ids, int32_t* targets,
                          int32_t* doc_start) {
  if (context_.size() == 1) return sample(index, ids, targets, doc_start);
  const size_t n = static_cast<size_t>(context_.seq_len());
  window_ids_.resize(n);
  window_targets_.resize(n);
  if (doc_start != nullptr) window_docs_.resize(n);
  LATAM_RETURN_IF_ERROR(sample(index, window_ids_.data(), window_targets_.data(),
                               doc_start != nullptr ? window_docs_.data() : nullptr));
  context_.Scatter(window_ids_.data(), 1, ids);
  context_.Scatter(window_targets_.data(), 1, targets);
  if (doc_start != nullptr) context_.Scatter(window_docs_.data(), 1, doc_start);  // global positions stay global
  return Status::Ok();
}

Result<StepResult> Engine::Step(int64_t step, uint64_t first_sample, const SampleFn& sample) {
  grid_->position().BeginStep(step + 1);  // numbered as StepResult::step, for hang reports
  const auto start = std::chrono::steady_clock::now();
  const auto& t = config_.train();
  // seq_len: the rows of a sample this rank holds (all of them without
  // context parallelism); tokens: the whole step's.
  const int64_t seq_len = context_.local_len(), micro = t.micro_batch_size();
  const double tokens = static_cast<double>(t.global_batch_size() * config_.data().seq_len());
  const std::vector<uint64_t> samples = data::DataParallelSamples(
      first_sample, static_cast<uint64_t>(t.global_batch_size()), grid_->dp_rank(), grid_->shape().data);

  Status status;
  double local_counted = 0.0;  // targets that count in the loss (not -1)
  double local_pairs = 0.0;    // document masking: visible (query, key) pairs of this rank's rows
  // A rank may fetch a micro-batch more than once (for each of its chunks,
  // under document masking with virtual stages); count it once.
  std::vector<char> seen(static_cast<size_t>(micro_batches_), 0);
  auto fetch = [&](int m, int32_t* ids, int32_t* targets, int32_t* doc_start) {
    for (int64_t b = 0; b < micro && status.ok(); ++b) {
      status = FetchLocal(sample, samples[static_cast<size_t>(m * micro + b)], ids + b * seq_len,
                          targets + b * seq_len, doc_start != nullptr ? doc_start + b * seq_len : nullptr);
    }
    if (seen[static_cast<size_t>(m)]++ != 0) return;
    for (int64_t i = 0; i < micro * seq_len; ++i) local_counted += targets[i] >= 0 ? 1.0 : 0.0;
    if (doc_start != nullptr && config_.data().document_mask()) {
      // The query at global position g sees the keys g - doc_start + 1 of its document.
      for (int64_t i = 0; i < micro * seq_len; ++i) {
        local_pairs += static_cast<double>(context_.GlobalPosition(context_.rank(), i % seq_len) - doc_start[i] + 1);
      }
    }
  };
  model_->parameters().ZeroGrads();
  if (!adapter_tensors_.empty()) {
    model_->adapter_parameters()->ZeroGrads();
    optimizer_->FinishParameterGather();
  }
  optimizer_->BeginGradientReduction();
  const double local_loss = executor_->TrainStep(fetch, static_cast<float>(1.0 / tokens));
  if (!adapter_tensors_.empty()) {
    optimizer_->GradientsFinal(adapter_tensors_);
  } else if (embedding_group_ != nullptr) {
    embedding_group_->AllReduceSync(model_->parameters().grad(tied_embedding_), ReduceOp::kSum);
    optimizer_->GradientsFinal({tied_embedding_});
  }
  optimizer_->FinishGradientReduction();
  // A data error on any rank stops every rank, after the step's communication.
  const double bad = grid_->world().AllReduceScalar(status.ok() ? 0.0 : 1.0, ReduceOp::kSum);
  stopped_by_other_rank_ = status.ok() && bad > 0;
  if (!status.ok()) return status;
  if (bad > 0) return Status::InvalidInput("a data error on another rank stopped the step");

  // The loss is the mean over the targets that count (masked ones, -1, do
  // not). The backward pass scaled each token's gradient by 1 / tokens
  // before the count was known; `rescale` turns that into 1 / counted,
  // for the norm and the update alike. The loss and the count of a token
  // are the same on every tensor-parallel rank of the last stage: count
  // them once. Context-parallel ranks hold different tokens: each counts its own.
  // This rank's own time: up to here it waited only on the peers its
  // pipeline stage and gradient buckets exchange with.
  const double rank_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  const bool reports = model_->layout().holds_head() && grid_->tp_rank() == 0;
  const double counted = grid_->world().AllReduceScalar(reports ? local_counted : 0.0, ReduceOp::kSum);
  const double rescale = counted > 0 ? tokens / counted : 0.0;
  StepResult r;
  r.first_sample = first_sample;
  r.rank_ms = rank_ms;
  r.grad_norm = optimizer_->GradNorm() * rescale;
  r.lr = LearningRate(config_.optimizer(), step, t.steps());
  r.loss = counted > 0 ? grid_->world().AllReduceScalar(reports ? local_loss : 0.0, ReduceOp::kSum) / counted : 0.0;
  // Every rank holds the same all-reduced loss; the gradient norm is summed
  // over a group that may not span the world (ZeRO-0), so the verdict is
  // agreed once more: the most severe one wins.
  r.verdict = static_cast<StepVerdict>(static_cast<int>(grid_->world().AllReduceScalar(
      static_cast<double>(health_.Judge(r.loss, r.grad_norm)), ReduceOp::kMax)));
  // A skipped step leaves the weights, the moments and the bias-correction
  // counter as they were; the step counter (and so the learning-rate
  // schedule) still advances, as in Megatron-LM and llm.c. Nothing is left
  // in flight: under ZeRO-1/2 no parameter all-gather starts, and the next
  // step zeroes the gradients (ZeRO-2: the owned shard too) before use.
  if (r.verdict == StepVerdict::kUpdate) {
    optimizer_->Step(static_cast<float>(r.lr),
                     static_cast<float>(rescale) * ClipFactor(r.grad_norm, config_.optimizer().grad_clip()));
  }
  health_.Record(r.verdict, r.loss, r.grad_norm, first_sample);
  if (config_.data().document_mask()) {
    const double full = static_cast<double>(t.global_batch_size()) * static_cast<double>(config_.data().seq_len()) *
                        static_cast<double>(config_.data().seq_len() + 1) / 2.0;
    r.attention_fraction = grid_->world().AllReduceScalar(reports ? local_pairs : 0.0, ReduceOp::kSum) / full;
  }
  r.step = step + 1;
  r.step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  r.tokens_per_s = tokens / (r.step_ms / 1000.0);
  return r;
}

Result<double> Engine::Evaluate(int64_t n, const SampleFn& sample) {
  const int64_t seq_len = context_.local_len(), micro = config_.train().micro_batch_size();
  const int d = grid_->shape().data, r = grid_->dp_rank();
  // Replica r evaluates samples r, r + D, r + 2D, ...; every replica runs the
  // same number of micro-batches (short ones padded with ignored targets).
  const int64_t per_rank = (n + d - 1) / d;
  const int micro_batches = static_cast<int>((per_rank + micro - 1) / micro);
  Status status;
  double local_tokens = 0.0;
  std::vector<char> seen(static_cast<size_t>(micro_batches), 0);  // count each micro-batch once
  auto fetch = [&](int m, int32_t* ids, int32_t* targets, int32_t* doc_start) {
    const bool first_fetch = seen[static_cast<size_t>(m)]++ == 0;
    for (int64_t b = 0; b < micro; ++b) {
      const int64_t k = (m * micro + b) * d + r;
      int32_t* docs = doc_start != nullptr ? doc_start + b * seq_len : nullptr;
      if (k < n && status.ok()) {
        status = FetchLocal(sample, static_cast<uint64_t>(k), ids + b * seq_len, targets + b * seq_len, docs);
        for (int64_t i = 0; i < seq_len && first_fetch; ++i) {
          local_tokens += targets[b * seq_len + i] >= 0 ? 1.0 : 0.0;
        }
      } else {
        std::fill(ids + b * seq_len, ids + (b + 1) * seq_len, 0);
        std::fill(targets + b * seq_len, targets + (b + 1) * seq_len, -1);
        if (docs != nullptr) std::fill(docs, docs + seq_len, 0);
      }
    }
  };
  optimizer_->FinishParameterGather();
  const double local_loss = executor_->EvalStep(micro_batches, fetch);
  const double bad = grid_->world().AllReduceScalar(status.ok() ? 0.0 : 1.0, ReduceOp::kSum);
  stopped_by_other_rank_ = status.ok() && bad > 0;
  if (!status.ok()) return status;
  if (bad > 0) return Status::InvalidInput("a data error on another rank stopped the evaluation");
  const bool reports = model_->layout().holds_head() && grid_->tp_rank() == 0;
  const double loss = grid_->world().AllReduceScalar(reports ? local_loss : 0.0, ReduceOp::kSum);
  const double count = grid_->world().AllReduceScalar(reports ? local_tokens : 0.0, ReduceOp::kSum);
  return count > 0 ? loss / count : 0.0;
}

}  // namespace latam
