// Low-rank adaptation (LoRA, Hu et al. 2021) of the Llama projections.
//
// A target projection W [out, in] (Hugging Face layout, y = x W^T) is frozen
// and gains a trainable low-rank update:
//   y = x W^T + s (x A^T) B^T,   A [r, in], B [out, r], s = alpha / r,
// with B initialised to zero (the adapted model starts as the base model)
// and A to Normal(0, 1 / in) (PEFT's default draws A uniformly with the same
// order of magnitude; any full-rank A works since B = 0).
// With u = x A^T [m, r] and dy the gradient of y:
//   dB += s dy^T u        [out, r]
//   du  = s dy B          [m, r]
//   dA += du^T x          [r, in]
//   dx += du A            [m, in]
// u is recomputed in the backward pass from x (2 m in r FLOPs) rather than
// kept per micro-batch.
//
// Tensor parallelism (T ranks) splits A and B the way the base layer is split,
// so that no collective is added to the forward or backward pass:
//   column-parallel W_t = W[rows of rank t] (q, k, v, gate, up):
//     A whole (replicated), B_t = B[rows of rank t];
//     y_t += s (x A^T) B_t^T          exact on every rank (x is replicated);
//     dB_t exact; du_t = s dy_t B_t is rank t's share of du, so
//     dx_t += du_t A is summed by the all-reduce the base input gradient
//     already takes, and dA_t = du_t^T x is a partial sum: the model sums
//     A's gradient over the tensor-parallel group (LoraSpec tp_partial_grad).
//   row-parallel W_t = W[:, columns of rank t] (o, down):
//     A_t = A[:, columns of rank t], B whole (replicated);
//     u_t = x_t A_t^T is rank t's share of u, and y_partial_t += s u_t B^T
//     is summed (all-reduce or reduce-scatter) with the base's partial
//     products; du = s dy B is exact (dy is replicated), so dA_t and dx_t
//     are exact, and dB_t = s dy^T u_t is a partial sum over the group.
// Replicated KV heads (fewer KV heads than T) replicate B's k and v rows like
// the base weights, and their gradients are summed over the replicas.
//
// Dropout on the adapter input (adapter.dropout) is not implemented yet: the
// config validation refuses a non-zero value.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "model/config.pb.h"
#include "model/layout.h"
#include "model/model_ops.h"
#include "model/parameters.h"

namespace latam {

enum class LoraTarget { kQ, kK, kV, kO, kGate, kUp, kDown };
inline constexpr int kNumLoraTargets = 7;
// q_proj, k_proj, ..., down_proj.
const char* LoraTargetName(LoraTarget t);
// "self_attn.q_proj", ..., "mlp.down_proj": the module path under a layer.
const char* LoraTargetModule(LoraTarget t);
bool IsRowParallel(LoraTarget t);

struct LoraOptions {
  int64_t rank = 0;  // 0: no adapter
  double alpha = 0.0;
  std::array<bool, kNumLoraTargets> targets{};
  bool enabled() const { return rank > 0; }
  bool has(LoraTarget t) const { return targets[static_cast<size_t>(t)]; }
  float scale() const { return enabled() ? static_cast<float>(alpha / static_cast<double>(rank)) : 0.0f; }
};

// adapter { ... } checked: kind, rank (1 .. min(dim, ffn)), alpha > 0 and
// finite, dropout 0, targets known and not repeated; errors name the field
// (adapter.targets[2] ...).
Status ValidateAdapterConfig(const config::Config& config);
// The options of a valid config (rank 0 when adapter.kind is NONE).
LoraOptions LoraOptionsFromConfig(const config::Config& config);

// Canonical adapter tensor names: model.layers.{i}.self_attn.q_proj.lora_A.weight
// and ...lora_B.weight (PEFT's names without its base_model.model. prefix).
std::string LoraParamName(int64_t layer, LoraTarget t, bool b);

// The adapter parameters of this rank's layers, per layer in target order,
// A before B, split as described above. A column-parallel target's A and a
// row-parallel target's B are replicated over tensor parallelism: counted in
// the gradient norm on tensor-parallel rank 0 only.
std::vector<ParamSpec> LoraParameterSpecs(const ModelShape& shape, const ModelLayout& layout,
                                          const LoraOptions& lora);
// Whether spec `name` (one of the above) has a gradient that is a partial
// sum over the tensor-parallel group.
bool LoraGradIsTpPartial(const std::string& name);

// One adapted projection on this rank: its A and B (compute copies), their
// gradients, and where its output sits in the (fused) base output
// [m, out_stride]: columns [out_offset, out_offset + B.rows()).
struct LoraSite {
  Tensor a, b, da, db;
  int64_t out_offset = 0;
  int64_t out_stride = 0;
};

// y[:, out_offset ..] += s (x A^T) B^T; `u` [m, r] is scratch.
void LoraForward(ModelOps& ops, const LoraSite& site, float scale, const Tensor& x, const Tensor& u,
                 const Tensor& y);
// With dy [m, out_stride] the gradient of the base output: dB += s dy^T u,
// dA += du^T x, dx += du A (dx already holds the base input gradient); u,
// du [m, r] are scratch.
void LoraBackward(ModelOps& ops, const LoraSite& site, float scale, const Tensor& x, const Tensor& dy,
                  const Tensor& dx, const Tensor& u, const Tensor& du);

// Folds a single-process adapter into its base (both of one whole model, f32
// on the CPU): W += s B A for every adapted projection, so the base then
// computes what base + adapter computed (to fp32 rounding).
void MergeLora(const ParameterSet& adapter, const LoraOptions& lora, const ParameterSet& base);

}  // namespace latam
