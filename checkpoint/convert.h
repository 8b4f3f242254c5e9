// Conversion between checkpoints and Hugging Face Llama directories.
//
// Tensor names are the same on both sides (checkpoints use the Hugging Face
// names and its rotate-half RoPE convention), so conversion is a change of
// layout and container only:
//   ExportHf: every parameter tensor of a checkpoint (not the optimizer
//     moments), read whole, in canonical order (embedding, layers, final
//     norm, head) -> safetensors (one file, or shards of at most 5 GB with
//     model.safetensors.index.json), config.json for LlamaForCausalLM and the
//     run's tokenizer.json. Tied embeddings export without lm_head.weight.
//   ImportHf: config.json + safetensors (+ tokenizer.json) -> a step
//     directory with one shard file, step 0 and no optimizer state, that
//     latam-train starts from (train.init_from or --resume) under any layout.
//     F32 and BF16 tensors are stored as they are; F16 is widened to F32.
//     config.json's sizes are checked against the safetensors headers
//     (vocab_size and hidden_size against the embedding, num_hidden_layers
//     against the layers present, the head counts and intermediate_size
//     against layer 0) before anything is allocated from them; a mismatch
//     is Status::InvalidInput naming config.json and the key.
// ImportHf(ExportHf(ckpt)) holds the same parameter bits as ckpt (F32).
// Output directories must not exist or be empty: nothing on disk is replaced.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "checkpoint/safetensors.h"
#include "checkpoint/store.h"
#include "core/status.h"

namespace latam::ckpt {

struct ExportOptions {
  StDType dtype = StDType::kF32;  // F32 or BF16 (rounded to nearest even)
  uint64_t max_shard_bytes = kHfMaxShardBytes;
};

Status ExportHf(const std::string& checkpoint, const std::string& out_dir, const ExportOptions& options);
Status ImportHf(const std::string& hf_dir, const std::string& out_dir);

// Orders Hugging Face Llama tensor names as a model lists them.
bool CanonicalLess(const std::string& a, const std::string& b);

}  // namespace latam::ckpt
