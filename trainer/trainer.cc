#include "trainer/trainer.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "core/env.h"
#include "data/tokenizer.h"
#include "model/layout.h"
#include "model/model_ops.h"
#include "model/state.h"
#include "parallel/agree_status.h"
#include "parallel/mpi_communicator.h"
#include "trainer/plan.h"
#ifdef LATAM_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif
#include "trainer/signals.h"

namespace latam {

namespace fs = std::filesystem;

Result<std::unique_ptr<Trainer>> Trainer::Create(const Config& config, const MpiSession& mpi,
                                                 const std::string& resume) {
  std::unique_ptr<Trainer> t(new Trainer(config, mpi));
  LATAM_RETURN_IF_ERROR(t->Init(resume));
  return t;
}

Status Trainer::OpenData() {
  const auto& d = config_.data();
  const int64_t vocab = config_.model().vocab_size();
  if (!d.tokenizer().empty()) {
    // The shards were written with this tokenizer: its ids must fit the model.
    LATAM_ASSIGN_OR_RETURN(auto tokenizer, data::Tokenizer::Load(d.tokenizer()));
    if (tokenizer->vocab_size() > vocab) {
      return Status::InvalidInput("model.vocab_size: " + std::to_string(vocab) + " is smaller than the " +
                                  std::to_string(tokenizer->vocab_size()) + " tokens of data.tokenizer " +
                                  d.tokenizer());
    }
  }
  std::vector<double> weights;
  std::vector<uint64_t> windows;
  for (const auto& t : d.train()) {
    LATAM_ASSIGN_OR_RETURN(auto ds,
                           data::TokenDataset::Open(t.path(), d.seq_len(), vocab, d.mask_cross_document_loss()));
    weights.push_back(t.weight());
    windows.push_back(ds->num_windows());
    train_data_.push_back(std::move(ds));
  }
  sampler_ = std::make_unique<data::MixtureSampler>(weights, windows, d.seed());
  for (const auto& e : d.eval()) {
    LATAM_ASSIGN_OR_RETURN(auto ds,
                           data::TokenDataset::Open(e.path(), d.seq_len(), vocab, d.mask_cross_document_loss()));
    eval_data_.push_back(std::move(ds));
  }
  return Status::Ok();
}

Status Trainer::OpenRunDir() {
  if (mpi_.world_rank() != 0) return Status::Ok();
  const std::string& run_dir = config_.train().run_dir();
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) return Status::InvalidInput("train.run_dir: cannot create " + run_dir + ": " + ec.message());
  LATAM_RETURN_IF_ERROR(WriteFileAtomically(Env::Default(), run_dir + "/config.textproto", ConfigToText(config_)));
  LATAM_ASSIGN_OR_RETURN(metrics_, MetricsWriter::Create(run_dir));
  return Status::Ok();
}

Status Trainer::Init(const std::string& resume) {
  // Config errors are the same on every rank: each rank returns without
  // communicating (so a wrong world size cannot hang the job).
  ValidationOptions options;
  options.world_size = mpi_.world_size();
  options.check_files = true;
  LATAM_RETURN_IF_ERROR(ValidateConfig(config_, options));
  const auto& p = config_.parallel();
  LATAM_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> world, OpenWorld());
  grid_ = std::make_unique<ProcessGrid>(
      std::move(world),
      GridShape{p.tensor(), p.pipeline(), DataParallelSize(config_, mpi_.world_size()), std::max(1, p.context())});
  LATAM_RETURN_IF_ERROR(AgreeOnStatus(OpenData(), MPI_COMM_WORLD));
  engine_ = std::make_unique<Engine>(config_, grid_.get(), device_ != nullptr ? device_->stream() : Stream());
  LATAM_RETURN_IF_ERROR(AgreeOnStatus(Restore(resume), MPI_COMM_WORLD));
  // Only a run that passed every check writes into its run directory: a
  // refused resume leaves the directory describing its checkpoints.
  LATAM_RETURN_IF_ERROR(AgreeOnStatus(OpenRunDir(), MPI_COMM_WORLD));
  saver_ = std::make_unique<ckpt::CheckpointSaver>(config_.train().run_dir() + "/checkpoints", &grid_->world(),
                                                   config_.train().keep_checkpoints(), config_.data().tokenizer());
  return Status::Ok();
}

Result<std::unique_ptr<Communicator>> Trainer::OpenWorld() {
  const ComputeSettings compute = ComputeSettingsOf(config_);
  const double timeout_s = config_.train().collective_timeout_s();
  if (compute.device != Device::kCUDA)
    return std::unique_ptr<Communicator>(new MpiCommunicator(MPI_COMM_WORLD, "world", timeout_s));
  // Every rank learns whether every rank got its GPU before NCCL is set up.
  Result<std::unique_ptr<ComputeDevice>> device =
      ComputeDevice::Open(mpi_.local_rank(), mpi_.local_size(), mpi_.world_rank(), compute.attention);
  LATAM_RETURN_IF_ERROR(AgreeOnStatus(device.status(), MPI_COMM_WORLD));
  device_ = std::move(device).value();
  if (mpi_.world_rank() == 0) {
    const int64_t head_dim = ModelShape::FromConfig(config_.model()).head_dim;
    const bool tensor_core = compute.dtype == DType::kBF16 && (head_dim == 64 || head_dim == 128);
    std::printf("latam-train: rank 0 on %s; attention kernels: %s\n", device_->Describe().c_str(),
                AttentionKernelsName(compute.attention, tensor_core).c_str());
    std::fflush(stdout);
  }
#ifdef LATAM_HAVE_NCCL
  NcclOptions configured;
  configured.timeout_s = timeout_s;
  LATAM_ASSIGN_OR_RETURN(const NcclOptions options, NcclOptionsFromEnvironment(configured));
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(MPI_COMM_WORLD, "world", device_->stream().cuda(), options));
#else
  return Status::InvalidInput(
      "train.device=cuda needs the NCCL communicator: this build has none (install NCCL, "
      "configure with LATAM_NCCL=ON)");
#endif
}

Status Trainer::Restore(const std::string& resume) {
  const auto& t = config_.train();
  const std::string own = t.run_dir() + "/checkpoints";
  const bool has_own = fs::exists(own + "/" + ckpt::kLatestFile);
  std::string source;
  ckpt::LoadWhat what = ckpt::LoadWhat::kAll;
  if (resume == "auto" && has_own) {
    source = own;
  } else if (resume == "auto" || resume == "none") {
    if (has_own) {
      return Status::InvalidInput("train.run_dir " + t.run_dir() +
                                  " already has checkpoints; continue it with --resume auto, or use a new run_dir");
    }
    if (t.init_from().empty()) return Status::Ok();
    source = t.init_from();
    LATAM_ASSIGN_OR_RETURN(what, ckpt::ParseLoadWhat(t.init_load()));
  } else {
    source = resume;
  }
  const auto load_start = std::chrono::steady_clock::now();
  LATAM_ASSIGN_OR_RETURN(auto reader, ckpt::CheckpointReader::Open(source));
  // An adapter run from a base model's checkpoint: weights only (LoadInPlace).
  if (config_.adapter().kind() != config::AdapterConfig::NONE &&
      reader->manifest().adapter().kind() == config::AdapterConfig::NONE) {
    what = ckpt::LoadWhat::kWeights;
  }
  LATAM_ASSIGN_OR_RETURN(const ckpt::LoadResult loaded, LoadInPlace(*reader, what));
  start_step_ = loaded.step;
  last_saved_step_ = what == ckpt::LoadWhat::kAll ? loaded.step : -1;
  consumed_ = loaded.consumed_samples;
  if (what == ckpt::LoadWhat::kAll) {
    // The run's own state: bad steps are judged and skipped as before the
    // save, and a roll-back returns here until the run saves again.
    LATAM_RETURN_IF_ERROR(skipped_.FromProto(reader->manifest().data()));
    engine_->health().Restore(reader->manifest().health());
    rollback_dir_ = reader->dir();
  }
  if (start_step_ > t.steps()) {
    return Status::InvalidInput("train.steps: " + std::to_string(t.steps()) + " is below the step " +
                                std::to_string(start_step_) + " of checkpoint " + reader->dir());
  }
  if (mpi_.world_rank() == 0) {
    const ckpt::Layout& l = reader->manifest().layout();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    std::printf("latam-train: rank 0 read %.1f MB in %.2f s\n", static_cast<double>(reader->bytes_read()) / 1e6,
                seconds);
    // Uneven stages: the layers of each stage, e.g. ", stages of 2, 3, 3 layers".
    std::string stages;
    const StageSplit split{l.first_stage_layers(), l.last_stage_layers()};
    if (split.uneven()) {
      for (int64_t n : StageLayerCounts(reader->manifest().model().n_layers(), l.pipeline(), split)) {
        stages += (stages.empty() ? ", stages of " : ", ") + std::to_string(n);
      }
      stages += " layers";
    }
    std::printf(
        "latam-train: loaded %s from %s (step %lld, %llu samples consumed, saved as tensor %d x pipeline %d x "
        "data %d, %d virtual stages%s, ZeRO-%d%s)\n",
        what == ckpt::LoadWhat::kAll       ? "everything"
        : what == ckpt::LoadWhat::kWeights ? "weights"
                                           : "weights and optimizer",
        reader->dir().c_str(), static_cast<long long>(reader->manifest().step()),
        static_cast<unsigned long long>(reader->manifest().consumed_samples()), l.tensor(), l.pipeline(), l.data(),
        l.virtual_stages(), stages.c_str(), l.zero_stage(), loaded.moments_loaded ? "" : "; fresh optimizer state");
    std::fflush(stdout);
  }
  return Status::Ok();
}

std::vector<StatePiece> Trainer::Pieces(bool with_adapter) {
  LlamaModel& model = engine_->model();
  if (model.adapter_parameters() == nullptr) {
    return StatePieces(model.parameters(), &engine_->optimizer(), grid_->replica_rank());
  }
  // LoRA: the frozen base without moments, then the adapter with its own.
  std::vector<StatePiece> pieces = StatePieces(model.parameters(), nullptr, grid_->replica_rank());
  if (with_adapter) {
    std::vector<StatePiece> adapter =
        StatePieces(*model.adapter_parameters(), &engine_->optimizer(), grid_->replica_rank());
    pieces.insert(pieces.end(), adapter.begin(), adapter.end());
  }
  return pieces;
}

Result<ckpt::LoadResult> Trainer::LoadInPlace(ckpt::CheckpointReader& reader, ckpt::LoadWhat what) {
  const config::AdapterConfig& saved = reader.manifest().adapter();
  const bool saved_adapter = saved.kind() != config::AdapterConfig::NONE;
  const bool adapter = engine_->model().adapter_parameters() != nullptr;
  const std::string where = "checkpoint " + reader.dir();
  if (saved_adapter && !adapter) {
    return Status::InvalidInput(where + " holds a LoRA adapter (rank " + std::to_string(saved.rank()) +
                                "): resume it with the same adapter block in the config");
  }
  if (saved_adapter) {
    // The adapter must be the one saved: same kind, rank, scale and targets.
    const config::AdapterConfig& mine = config_.adapter();
    std::string field;
    if (saved.kind() != mine.kind()) field = "adapter.kind";
    else if (saved.rank() != mine.rank()) field = "adapter.rank";
    else if (saved.alpha() != mine.alpha()) field = "adapter.alpha";
    else if (std::set<std::string>(saved.targets().begin(), saved.targets().end()) !=
             std::set<std::string>(mine.targets().begin(), mine.targets().end())) {
      field = "adapter.targets";
    }
    if (!field.empty()) {
      return Status::InvalidInput(field + " differs from " + where + "'s adapter (rank " + std::to_string(saved.rank()) +
                                  ", alpha " + std::to_string(saved.alpha()) + ")");
    }
  }
  // An adapter run started from a base model's checkpoint takes its weights
  // only; the adapter starts fresh (B = 0), and so does its optimizer.
  if (adapter && !saved_adapter) what = ckpt::LoadWhat::kWeights;
  const std::vector<StatePiece> pieces = Pieces(saved_adapter);
  LATAM_ASSIGN_OR_RETURN(const ckpt::LoadResult loaded, ckpt::LoadState(reader, config_.model(), pieces, what));
  FinishOptimizerLoad(engine_->optimizer(), loaded.moments_loaded, loaded.optimizer_step);
  engine_->optimizer().WeightsLoaded();  // the compute copy from the loaded master weights
  return loaded;
}

Status Trainer::StartSave(int64_t step) {
  const auto& p = config_.parallel();
  ckpt::Checkpoint h;
  h.set_format_version(ckpt::kFormatVersion);
  h.set_step(step);
  h.set_consumed_samples(consumed_);
  *h.mutable_model() = config_.model();
  ckpt::Layout* l = h.mutable_layout();
  l->set_tensor(p.tensor());
  l->set_pipeline(p.pipeline());
  l->set_data(grid_->shape().data);
  l->set_context(grid_->shape().context);
  l->set_virtual_stages(p.virtual_stages());
  l->set_zero_stage(p.zero_stage());
  l->set_first_stage_layers(p.first_stage_layers());
  l->set_last_stage_layers(p.last_stage_layers());
  ckpt::OptimizerState* o = h.mutable_optimizer();
  *o->mutable_hyper() = config_.optimizer();
  o->set_step(engine_->optimizer().step());
  o->set_has_moments(true);
  ckpt::DataState* d = h.mutable_data();
  d->set_consumed_samples(consumed_);
  d->set_seed(config_.data().seed());
  *d->mutable_train() = config_.data().train();
  skipped_.ToProto(d);
  *h.mutable_health() = engine_->health().State();
  h.set_rng_seed(config_.train().seed());
  h.set_config_text(ConfigToText(config_));
  h.set_created_unix_ms(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  last_saved_step_ = step;
  // Once written, `latest` names this save or a newer one.
  rollback_dir_ = config_.train().run_dir() + "/checkpoints";
  if (config_.adapter().kind() != config::AdapterConfig::NONE) *h.mutable_adapter() = config_.adapter();
  return saver_->Start(h, Pieces(true));
}

Status Trainer::PollSave(bool wait) {
  LATAM_ASSIGN_OR_RETURN(const std::optional<ckpt::SaveStats> done, saver_->Poll(wait));
  if (!done || metrics_ == nullptr) return Status::Ok();
  const double mb = static_cast<double>(done->bytes) / 1e6;
  const double per_s = done->write_s > 0 ? static_cast<double>(done->bytes) / done->write_s : 0.0;
  metrics_->Write(done->step, {{"checkpoint/bytes", static_cast<double>(done->bytes)},
                               {"checkpoint/write_s", done->write_s},
                               {"checkpoint/bytes_per_s", per_s},
                               {"checkpoint/snapshot_ms", done->snapshot_ms},
                               {"checkpoint/save_s", done->total_s}});
  std::printf("saved %s | %.1f MB written in %.2f s (%.1f MB/s) | training paused %.1f ms\n", done->dir.c_str(), mb,
              done->write_s, per_s / 1e6, done->snapshot_ms);
  std::fflush(stdout);
  return Status::Ok();
}

Status Trainer::AgreeOnEngineError(const Status& status) {
  // Every rank failed the same Step or Evaluate; the ranks whose own data
  // was fine step aside so that the message of the lowest rank that found
  // the error (file, offset, reason) is the one every rank returns.
  const Status agreed = AgreeOnStatus(engine_->stopped_by_other_rank() ? Status::Ok() : status, MPI_COMM_WORLD);
  return agreed.ok() ? status : agreed;
}

Result<std::vector<double>> Trainer::Evaluate() {
  std::vector<double> losses;
  double total = 0.0, count = 0.0;
  const int64_t samples = config_.train().eval_samples();
  for (const auto& ds : eval_data_) {
    // Evaluation reads the dataset's first windows in file order.
    auto sample = [&](uint64_t k, int32_t* ids, int32_t* targets, int32_t* doc_start) {
      return ds->ReadWindow(k % ds->num_windows(), ids, targets, doc_start);
    };
    Result<double> evaluated = engine_->Evaluate(samples, sample);
    if (!evaluated.ok()) return AgreeOnEngineError(evaluated.status());
    const double loss = *evaluated;
    losses.push_back(loss);
    total += loss * static_cast<double>(samples);
    count += static_cast<double>(samples);
  }
  losses.push_back(count > 0 ? total / count : 0.0);
  return losses;
}

void Trainer::Log(const StepResult& r) {
  if (metrics_ == nullptr) return;
  // Bytes this rank handed to each group's collectives in the step; a group
  // of one rank moves nothing.
  auto moved = [](const Communicator& c) { return c.size() > 1 ? static_cast<double>(c.stats().total_bytes()) : 0.0; };
  std::map<std::string, double> values{{"loss", r.loss},
                                       {"lr", r.lr},
                                       {"grad_norm", r.grad_norm},
                                       {"tokens_per_s", r.tokens_per_s},
                                       {"step_ms", r.step_ms},
                                       {"comm_bytes/tp", moved(grid_->tp())},
                                       {"comm_bytes/pp", moved(grid_->pp())},
                                       {"comm_bytes/dp", moved(grid_->replicas())}};
  // Ring attention's key/value traffic; the gradient reduction over data x
  // context ranks counts as dp above.
  if (grid_->shape().context > 1) values["comm_bytes/cp"] = moved(grid_->cp());
  // Block-causal attention's share of the causal (query, key) pairs: its
  // cost follows the sum of squared document lengths.
  if (config_.data().document_mask()) values["attention_fraction"] = r.attention_fraction;
  if (device_ != nullptr) {
    // Model FLOPs utilisation of the job's GPUs (rank 0's GPU stands for
    // the peak memory of every rank).
    const double flops = TrainingFlopsPerToken(ModelShape::FromConfig(config_.model()), config_.data().seq_len(),
                                               r.attention_fraction);
    const double peak = ComputeDevice::PeakFlops(ComputeSettingsOf(config_).dtype == DType::kBF16) * mpi_.world_size();
    values["mfu"] = r.tokens_per_s * flops / peak;
    values["gpu_peak_memory_bytes"] = static_cast<double>(device_->PeakMemoryBytes());
  }
  metrics_->Write(r.step, values);
  std::printf("step %6lld/%lld | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s | %.1f ms\n",
              static_cast<long long>(r.step), static_cast<long long>(config_.train().steps()), r.loss, r.lr,
              r.grad_norm, r.tokens_per_s, r.step_ms);
  std::fflush(stdout);
}

void Trainer::LogSkipped(const StepResult& r) {
  if (metrics_ == nullptr) return;
  metrics_->Write(r.step,
                  {{"skipped_step", 1.0}, {"loss", r.loss}, {"grad_norm", r.grad_norm}, {"lr", r.lr},
                   {"skipped_in_row", static_cast<double>(engine_->health().skipped_in_row())}},
                  {{"skip_reason", SkipReasonName(r.verdict)}});
  std::printf("step %6lld/%lld | skipped (%s): no update | loss %.4f | grad_norm %.3f | %d in a row\n",
              static_cast<long long>(r.step), static_cast<long long>(config_.train().steps()),
              SkipReasonName(r.verdict), r.loss, r.grad_norm, engine_->health().skipped_in_row());
  std::fflush(stdout);
}

void Trainer::ReportStragglers(const StepResult& r) {
  // Host doubles over MPI's world on either device (NCCL reduces device buffers).
  std::vector<double> step_ms(static_cast<size_t>(mpi_.world_size()));
  double own = r.rank_ms;
  MPI_CHECK(MPI_Allgather(&own, 1, MPI_DOUBLE, step_ms.data(), 1, MPI_DOUBLE, MPI_COMM_WORLD));
  if (metrics_ == nullptr) return;
  const StragglerSummary s = SummarizeStepTimes(step_ms);
  metrics_->Write(r.step, {{"straggler/rank", static_cast<double>(s.rank)},
                           {"straggler/ratio", s.ratio},
                           {"straggler/median_ms", s.median_ms}});
  std::printf("step %6lld: slowest rank %d at %.1f ms, %.2f x the median %.1f ms\n", static_cast<long long>(r.step),
              s.rank, step_ms[static_cast<size_t>(s.rank)], s.ratio, s.median_ms);
  std::fflush(stdout);
}

Result<int64_t> Trainer::RollBack(const StepResult& last) {
  // A save in flight completes first: it may be the newest checkpoint.
  LATAM_RETURN_IF_ERROR(PollSave(true));
  const int skipped = engine_->health().skipped_in_row();
  const uint64_t begin = engine_->health().skipped_from_sample(), end = consumed_;
  const std::string steps = "steps " + std::to_string(last.step - skipped + 1) + " to " + std::to_string(last.step);
  if (rollback_dir_.empty()) {
    return Status::Internal(std::to_string(skipped) + " steps in a row skipped as bad (" + steps + ", the last: " +
                            SkipReasonName(last.verdict) +
                            ") and no checkpoint to roll back to: the run has neither saved nor resumed one "
                            "(set train.save_every)");
  }
  Result<std::unique_ptr<ckpt::CheckpointReader>> reader = ckpt::CheckpointReader::Open(rollback_dir_);
  LATAM_RETURN_IF_ERROR(AgreeOnStatus(reader.status(), MPI_COMM_WORLD));
  // Bad steps that return after every roll-back to one checkpoint are not
  // in the data alone: stop rather than skip samples forever.
  const int64_t target = (*reader)->manifest().step();
  rollbacks_to_target_ = target == rollback_target_step_ ? rollbacks_to_target_ + 1 : 1;
  rollback_target_step_ = target;
  if (rollbacks_to_target_ > kRollBacksPerCheckpoint) {
    return Status::Internal(std::to_string(skipped) + " steps in a row skipped as bad (" + steps + ", the last: " +
                            SkipReasonName(last.verdict) + ") after the run rolled back to step " +
                            std::to_string(target) + " " + std::to_string(kRollBacksPerCheckpoint) +
                            " times: the run is not recovering; lower optimizer.lr or check the data from sample " +
                            std::to_string(begin));
  }
  const Result<ckpt::LoadResult> loaded = LoadInPlace(**reader, ckpt::LoadWhat::kAll);
  LATAM_RETURN_IF_ERROR(AgreeOnStatus(loaded.status(), MPI_COMM_WORLD));
  const ckpt::Checkpoint& manifest = (*reader)->manifest();
  // Training goes on from the checkpoint's step and sample, over the
  // skipped steps' samples; the detector's window is the checkpoint's.
  skipped_.Add(begin, end);
  engine_->health().RolledBack(manifest.health());
  consumed_ = loaded->consumed_samples;
  if (metrics_ != nullptr) {
    metrics_->Write(last.step, {{"rollback_to_step", static_cast<double>(loaded->step)},
                                {"skipped_samples_begin", static_cast<double>(begin)},
                                {"skipped_samples_end", static_cast<double>(end)},
                                {"rollbacks", static_cast<double>(engine_->health().rollbacks())}});
    std::printf("step %6lld: %d bad steps in a row (%s); rolled back to %s (step %lld) and skipping samples "
                "[%llu, %llu)\n",
                static_cast<long long>(last.step), skipped, steps.c_str(), (*reader)->dir().c_str(),
                static_cast<long long>(loaded->step), static_cast<unsigned long long>(begin),
                static_cast<unsigned long long>(end));
    std::fflush(stdout);
  }
  return loaded->step;
}

Status Trainer::Run() {
  const auto& t = config_.train();
  auto sample = [&](uint64_t index, int32_t* ids, int32_t* targets, int32_t* doc_start) {
    const data::MixtureSampler::Draw draw = sampler_->Sample(index);
    return train_data_[static_cast<size_t>(draw.dataset)]->ReadWindow(draw.window, ids, targets, doc_start);
  };
  for (int64_t step = start_step_; step < t.steps(); ++step) {
    grid_->ResetStats();
    // A roll-back marked the samples of its bad steps: training jumps over them.
    consumed_ = skipped_.NextStart(consumed_);
    Result<StepResult> stepped = engine_->Step(step, consumed_, sample);
    if (!stepped.ok()) return AgreeOnEngineError(stepped.status());
    const StepResult r = *stepped;
    if (device_ != nullptr) device_->SampleMemory();
    consumed_ += static_cast<uint64_t>(t.global_batch_size());
    if (r.verdict != StepVerdict::kUpdate) {
      LogSkipped(r);
    } else if (r.step % t.log_every() == 0 || r.step == t.steps() || r.step == 1) {
      Log(r);
    }
    if (t.straggler_every() > 0 && r.step % t.straggler_every() == 0) ReportStragglers(r);
    const int skipped_in_row = engine_->health().skipped_in_row();
    if (t.max_skipped_steps() > 0 && skipped_in_row >= t.max_skipped_steps()) {
      LATAM_ASSIGN_OR_RETURN(const int64_t checkpoint_step, RollBack(r));
      step = checkpoint_step - 1;  // the loop's ++step continues at the checkpoint's step
      continue;
    }
    if (t.max_skipped_steps() == 0 && skipped_in_row >= kSkippedStepsWithoutRollBack) {
      return Status::Internal(std::to_string(skipped_in_row) + " steps in a row skipped as bad (the last at step " +
                              std::to_string(r.step) + ": " + SkipReasonName(r.verdict) +
                              ") and train.max_skipped_steps is 0 (no roll-back): the run is not recovering; "
                              "lower optimizer.lr or check the data from sample " +
                              std::to_string(engine_->health().skipped_from_sample()));
    }
    if (!eval_data_.empty() && t.eval_every() > 0 && (r.step % t.eval_every() == 0 || r.step == t.steps())) {
      LATAM_ASSIGN_OR_RETURN(const std::vector<double> losses, Evaluate());
      std::map<std::string, double> values{{"eval_loss", losses.back()}};
      std::string line = "eval at step " + std::to_string(r.step) + " | eval_loss " + std::to_string(losses.back());
      for (size_t i = 0; i < eval_data_.size(); ++i) {
        const std::string& name = config_.data().eval(static_cast<int>(i)).name();
        values["eval_loss/" + name] = losses[i];
        line += " | " + name + " " + std::to_string(losses[i]);
      }
      if (metrics_ != nullptr) {
        metrics_->Write(r.step, values);
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
      }
    }
    LATAM_RETURN_IF_ERROR(PollSave(false));
    // Every rank stops after the same step, however the signal reached them.
    // The signal number travels with the decision, so every rank names the
    // signal even when it reached only one of them.
    const int stop_signal =
        static_cast<int>(grid_->world().AllReduceScalar(static_cast<double>(PreemptionSignal()), ReduceOp::kMax));
    const bool stop = stop_signal != 0;
    const bool scheduled = t.save_every() > 0 && (r.step % t.save_every() == 0 || r.step == t.steps());
    if (stop || scheduled) LATAM_RETURN_IF_ERROR(StartSave(r.step));
    if (stop) {
      LATAM_RETURN_IF_ERROR(PollSave(true));
      // The record of the pre-emption goes to metrics.jsonl (flushed) as well
      // as to stdout: a scheduler that cancels a job (Slurm's requeue, for
      // one) may stop forwarding the job's output before the ranks finish.
      if (metrics_ != nullptr) {
        metrics_->Write(r.step, {{"preempted_by_signal", static_cast<double>(stop_signal)}});
      }
      return Status::Preempted("stopped by signal " + std::to_string(stop_signal) + " after step " +
                               std::to_string(r.step) + " and saved a checkpoint; resume with --resume auto");
    }
  }
  // The last update's parameter all-gathers (ZeRO-1) complete here.
  engine_->optimizer().FinishParameterGather();
  return PollSave(true);
}

}  // namespace latam
