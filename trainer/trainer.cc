#include "trainer/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "data/tokenizer.h"
#include "kernels/grad_norm.h"

namespace latam {

namespace fs = std::filesystem;

namespace {

// Writes `text` to `path` through a temporary file and a rename.
Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out.flush()) return Status::IoError("cannot write " + tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return Status::IoError("cannot rename " + tmp + " to " + path + ": " + ec.message());
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<Trainer>> Trainer::Create(const Config& config, const MpiSession& mpi) {
  std::unique_ptr<Trainer> t(new Trainer(config, mpi));
  LATAM_RETURN_IF_ERROR(t->Init());
  return t;
}

Status Trainer::Init() {
  ValidationOptions options;
  options.world_size = mpi_.world_size();
  options.check_files = true;
  LATAM_RETURN_IF_ERROR(ValidateConfig(config_, options));
  const auto& p = config_.parallel();
  if (mpi_.world_size() != 1 || p.tensor() != 1 || p.pipeline() != 1 || DataParallelSize(config_, 1) != 1) {
    return Status::InvalidInput(
        "parallel: this build trains on a single rank (tensor = pipeline = data = 1, one MPI process); got world "
        "size " +
        std::to_string(mpi_.world_size()));
  }
  if (config_.train().device() != "cpu") {
    return Status::InvalidInput("train.device: only cpu training is available in this build");
  }
  if (config_.train().save_every() > 0) {
    return Status::InvalidInput("train.save_every: checkpoint saving is not available in this build; set it to 0");
  }
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
    LATAM_ASSIGN_OR_RETURN(auto ds, data::TokenDataset::Open(t.path(), d.seq_len(), vocab));
    weights.push_back(t.weight());
    windows.push_back(ds->num_windows());
    train_data_.push_back(std::move(ds));
  }
  sampler_ = std::make_unique<data::MixtureSampler>(weights, windows, d.seed());
  for (const auto& e : d.eval()) {
    LATAM_ASSIGN_OR_RETURN(auto ds, data::TokenDataset::Open(e.path(), d.seq_len(), vocab));
    eval_data_.push_back(std::move(ds));
  }

  const std::string& run_dir = config_.train().run_dir();
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) return Status::InvalidInput("train.run_dir: cannot create " + run_dir + ": " + ec.message());
  if (mpi_.world_rank() == 0) {
    LATAM_RETURN_IF_ERROR(WriteFileAtomically(run_dir + "/config.textproto", ConfigToText(config_)));
    LATAM_ASSIGN_OR_RETURN(metrics_, MetricsWriter::Create(run_dir));
  }

  ActivationOptions act;
  act.micro_batch = config_.train().micro_batch_size();
  act.seq_len = d.seq_len();
  act.recompute = config_.train().recompute();
  model_ = std::make_unique<LlamaModel>(ModelShape::FromConfig(config_.model()), act);
  model_->parameters().InitWeights(config_.train().seed());
  optimizer_ = std::make_unique<AdamWOptimizer>(&model_->parameters(), config_.optimizer());
  inputs_.resize(static_cast<size_t>(model_->tokens_per_micro_batch()));
  targets_.resize(inputs_.size());
  return Status::Ok();
}

Result<StepResult> Trainer::Step() {
  const auto start = std::chrono::steady_clock::now();
  const auto& t = config_.train();
  const int64_t seq_len = config_.data().seq_len();
  const int64_t global_batch = t.global_batch_size();
  const int64_t micro = t.micro_batch_size();
  const double tokens = static_cast<double>(global_batch * seq_len);
  const float grad_scale = static_cast<float>(1.0 / tokens);

  ParameterSet& params = model_->parameters();
  params.ZeroGrads();
  double loss_sum = 0.0;
  const std::vector<uint64_t> samples =
      data::DataParallelSamples(static_cast<uint64_t>(step_), static_cast<uint64_t>(global_batch), 0, 1);
  for (int64_t first = 0; first < global_batch; first += micro) {
    for (int64_t b = 0; b < micro; ++b) {
      const data::MixtureSampler::Draw draw = sampler_->Sample(samples[static_cast<size_t>(first + b)]);
      LATAM_RETURN_IF_ERROR(train_data_[static_cast<size_t>(draw.dataset)]->ReadWindow(
          draw.window, inputs_.data() + b * seq_len, targets_.data() + b * seq_len));
    }
    loss_sum += model_->ForwardBackward(inputs_.data(), targets_.data(), grad_scale);
  }
  StepResult r;
  r.loss = loss_sum / tokens;
  if (!std::isfinite(r.loss)) {
    return Status::Internal("loss is " + std::to_string(r.loss) + " at step " + std::to_string(step_ + 1) +
                            " (diverged); lower optimizer.lr or check the data");
  }
  r.grad_norm = std::sqrt(cpu::SumOfSquares(params.flat_grads()));
  r.lr = LearningRate(config_.optimizer(), step_, t.steps());
  optimizer_->Step(static_cast<float>(r.lr), ClipFactor(r.grad_norm, config_.optimizer().grad_clip()));
  ++step_;
  r.step = step_;
  r.step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  r.tokens_per_s = tokens / (r.step_ms / 1000.0);
  return r;
}

Result<std::vector<double>> Trainer::Evaluate() {
  const int64_t seq_len = config_.data().seq_len();
  const int64_t micro = config_.train().micro_batch_size();
  const int64_t samples = config_.train().eval_samples();
  std::vector<double> losses;
  double total = 0.0, total_tokens = 0.0;
  for (const auto& ds : eval_data_) {
    double sum = 0.0, count = 0.0;
    for (int64_t first = 0; first < samples; first += micro) {
      // A last partial micro-batch is padded with ignored targets.
      std::fill(targets_.begin(), targets_.end(), -1);
      const int64_t n = std::min(micro, samples - first);
      for (int64_t b = 0; b < n; ++b) {
        // Evaluation reads the dataset's first windows in file order.
        LATAM_RETURN_IF_ERROR(ds->ReadWindow(static_cast<uint64_t>(first + b) % ds->num_windows(),
                                             inputs_.data() + b * seq_len, targets_.data() + b * seq_len));
      }
      sum += model_->ForwardLoss(inputs_.data(), targets_.data());
      count += static_cast<double>(n * seq_len);
    }
    losses.push_back(sum / count);
    total += sum;
    total_tokens += count;
  }
  losses.push_back(total_tokens > 0 ? total / total_tokens : 0.0);
  return losses;
}

void Trainer::Log(const StepResult& r) {
  if (metrics_ == nullptr) return;
  metrics_->Write(r.step, {{"loss", r.loss},
                           {"lr", r.lr},
                           {"grad_norm", r.grad_norm},
                           {"tokens_per_s", r.tokens_per_s},
                           {"step_ms", r.step_ms}});
  std::printf("step %6lld/%lld | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s | %.1f ms\n",
              static_cast<long long>(r.step), static_cast<long long>(config_.train().steps()), r.loss, r.lr,
              r.grad_norm, r.tokens_per_s, r.step_ms);
  std::fflush(stdout);
}

Status Trainer::Run() {
  const auto& t = config_.train();
  while (step_ < t.steps()) {
    LATAM_ASSIGN_OR_RETURN(const StepResult r, Step());
    if (r.step % t.log_every() == 0 || r.step == t.steps() || r.step == 1) Log(r);
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
  }
  return Status::Ok();
}

}  // namespace latam
