// A whole model read from a checkpoint into one process, whatever layout
// it was saved with: the parameters only, fp32 on the CPU, with a LoRA
// run's adapter merged into them. For latam-generate, latam-eval and tests.
#pragma once

#include <memory>
#include <string>

#include "checkpoint/checkpoint.pb.h"
#include "core/status.h"
#include "model/parameters.h"

namespace latam {

struct LoadedModel {
  ckpt::Checkpoint manifest;  // without the tensor records
  ModelShape shape;
  std::unique_ptr<ParameterSet> params;
  std::string tokenizer_path;  // "" when the checkpoint has none
  // The checkpoint held a LoRA adapter, now folded into `params` (MergeLora).
  bool adapter_merged = false;
};

// `checkpoint` is anything ckpt::CheckpointReader::Open accepts.
Result<LoadedModel> LoadModel(const std::string& checkpoint);

}  // namespace latam
