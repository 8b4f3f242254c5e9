// Loading, overriding and validating the training configuration
// (model/config.proto).
//
// Every error is a Status of kind kInvalidInput whose message starts with
// the file or the dotted field path it is about, e.g.
//   "model.n_heads: 12 is not divisible by parallel.tensor = 8".
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "core/status.h"
#include "model/config.pb.h"
#include "model/model.h"
#include "model/model_ops.h"

namespace latam {

using Config = config::Config;

// Parses a text-format config file (errors name the file, line and column).
// An enum value it does not know is named with its field and the values it
// allows: "FILE: line 3, column 11: train.device: 'tpu' is not one of cpu, cuda".
Result<Config> LoadConfigFile(const std::string& path);

// Applies one `--set` assignment "path=value". Paths are dotted field names;
// repeated messages take an index, and the index one past the end appends:
//   train.steps=100   parallel.tensor=2   data.train[0].weight=0.5
// An enum field takes one of its value names (train.device=cuda); any other
// value is "train.device: 'tpu' is not one of cpu, cuda".
Status ApplyOverride(Config* config, const std::string& assignment);

// Upper bounds ValidateConfig enforces: far above any real model (Llama 3.1
// 405B has 126 layers, dim 16384, ffn_dim 53248, 128 heads, 128,256 tokens,
// 131,072 positions), low enough that every size the planner and the trainer
// compute fits in 64 bits and that the tables built per layer, per rank or
// per micro-batch stay small: --plan allocates nothing in proportion to them
// and, at the limits, runs in seconds (it builds every stage's pipeline
// schedule, in time ~ pipeline^2 x virtual_stages x micro-batches).
struct ConfigLimits {
  static constexpr int kLayers = 1024;              // model.n_layers
  static constexpr int kDim = 1 << 17;              // model.dim
  static constexpr int kFfnDim = 1 << 19;           // model.ffn_dim
  static constexpr int kHeads = 1024;               // model.n_heads
  static constexpr int kVocab = 1 << 24;            // model.vocab_size
  static constexpr int kSeqLen = 1 << 21;           // model.max_seq_len (and so data.seq_len)
  static constexpr int kPipeline = 128;             // parallel.pipeline
  static constexpr int kVirtualStages = 1024;       // parallel.virtual_stages
  static constexpr int64_t kRanks = 1 << 20;        // tensor x context x pipeline x data
  static constexpr int64_t kMicroBatchTokens = 1 << 24;  // train.micro_batch_size x data.seq_len
  static constexpr int64_t kMicroBatches = 1 << 16;      // per data-parallel rank and step
  static constexpr int64_t kScheduleEntries = 1 << 20;   // micro-batches x pipeline x virtual_stages
  static constexpr int kSpikeWindow = 1 << 20;      // train.spike_window
};

struct ValidationOptions {
  // World size to check the layout against; 0 skips the check (--plan).
  int world_size = 0;
  // Whether data files must exist (false for --plan).
  bool check_files = true;

};

// Checks every value and every divisibility the layout needs.
Status ValidateConfig(const Config& config, const ValidationOptions& options);

// parallel.data, or world_size / (tensor * context * pipeline) when it is 0. With
// world_size 0 (no launch, --plan) an unset parallel.data counts as 1.
int DataParallelSize(const Config& config, int world_size);

// The config in text format (what the run directory's config.textproto holds).
std::string ConfigToText(const Config& config);

// train.device, train.precision, train.attention and train.recompute as the
// enums the model and its ops take: the one place these values are read.
struct ComputeSettings {
  Device device = Device::kCPU;
  // Activations and the compute copy of the weights: kBF16 for
  // precision bf16, else kF32.
  DType dtype = DType::kF32;
  AttentionChoice attention = AttentionChoice::kAuto;
  // train.recompute.
  Recompute recompute = Recompute::kNone;
};
ComputeSettings ComputeSettingsOf(const Config& config);

// The activation options of one training rank at context-parallel rank
// `cp_rank` (train.*, data.* and parallel.* as the model takes them: the
// micro-batch, the rank's rows per sequence and its ContextSplit, recompute,
// sequence parallelism, document masking and positions, device and dtype).
// The caller adds what depends on the rank's pipeline schedule (slots), the
// stream and the parameter placement.
ActivationOptions TrainingActivationOptions(const Config& config, int cp_rank);

}  // namespace latam
