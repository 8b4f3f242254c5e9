// Hugging Face Llama config.json <-> config::ModelConfig.
//
// HfConfigJson writes the config.json that transformers' LlamaForCausalLM
// loads next to exported weights; ParseHfConfig reads a Llama 3 / 3.1
// config.json (as published on the Hub or written by HfConfigJson) back.
// Field mapping: hidden_size = dim, intermediate_size = ffn_dim,
// num_hidden_layers = n_layers, num_attention_heads = n_heads,
// num_key_value_heads = n_kv_heads, vocab_size, rope_theta,
// rms_norm_eps = norm_eps, max_position_embeddings = max_seq_len,
// tie_word_embeddings = tie_embeddings, initializer_range = init_std,
// rope_scaling {"rope_type": "llama3", factor, low_freq_factor,
// high_freq_factor, original_max_position_embeddings} = rope_scaling.
//
// Ownership: plain values; nothing is retained.
//
// Errors: an unreadable file, invalid JSON, a missing or ill-typed required
// key, a size that is not a positive 32-bit integer, a number that is not
// finite (rms_norm_eps must lie in (0, 1), rope_theta and the RoPE scaling
// factors be positive, initializer_range >= 0), heads that do not divide
// hidden_size or KV heads that do not divide the heads, or a model this code
// cannot represent (non-SiLU activation, biases,
// head_dim != hidden_size / num_attention_heads, a RoPE scaling type other
// than llama3) is Status::InvalidInput naming the path and the JSON key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/config.pb.h"

namespace latam::ckpt {

// config.json text (2-space indented JSON, trailing newline). `torch_dtype`
// is e.g. "bfloat16" or "float32"; token ids < 0 are left out.
std::string HfConfigJson(const config::ModelConfig& m, const std::string& torch_dtype, int64_t bos_token_id,
                         int64_t eos_token_id);

struct HfConfig {
  // Every field explicitly set; rope_scaling present only when the file
  // configures llama3 scaling.
  config::ModelConfig model;
  std::string torch_dtype;             // "" when absent
  int64_t bos_token_id = -1;           // -1 when absent or null
  int64_t eos_token_id = -1;           // the first id when the file gives a list
  std::vector<int64_t> eos_token_ids;  // all of them (empty when absent)
};

// Parses the config.json at `path`. Optional keys take transformers'
// LlamaConfig defaults (num_key_value_heads = num_attention_heads, rope_theta
// 10000, rms_norm_eps 1e-6, max_position_embeddings 2048, tie_word_embeddings
// false, initializer_range 0.02).
Result<HfConfig> ParseHfConfig(const std::string& path);
// The same for config.json text already in memory; `path` only names it in
// error messages.
Result<HfConfig> ParseHfConfigText(const std::string& text, const std::string& path);

}  // namespace latam::ckpt
