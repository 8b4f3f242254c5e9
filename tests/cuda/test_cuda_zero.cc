// The distributed optimizer on the GPU with bf16 compute (model/optimizer.h):
// a ZeRO-1 optimizer over a one-replica data-parallel group keeps the f32
// master weights as its shard (the ParameterSet holds only the bf16 copy),
// and trains bitwise like ZeRO-0 (the update kernel runs the same arithmetic
// on the same values, writing the master shard and the bf16 copy of the
// owned range, which the all-gather, the identity here, spreads). ZeRO-2
// (gradients in a two-slot pool, each bucket zeroed on the compute stream
// before it fills and its reduced share added into the owned buffer) trains
// bitwise like ZeRO-1 with one micro-batch per step. The
// multi-replica path needs NCCL and several GPUs (tests/mpi/test_layouts.cc
// with device=cuda).
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "model/layout.h"
#include "model/model.h"
#include "model/optimizer.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace latam {
namespace {

struct ZeroRun {
  std::vector<double> losses, norms;
  std::vector<float> master;  // f32 master weights, padded layout
  std::vector<uint16_t> copy;  // the bf16 compute copy's bits
};

ZeroRun Train(int zero, const std::vector<int32_t>& ids, const std::vector<int32_t>& targets) {
  const ModelShape shape = testing::SmallShape({.vocab = 256,
                                                .n_layers = 2,
                                                .n_heads = 4,
                                                .n_kv_heads = 2,
                                                .head_dim = 32,
                                                .ffn_dim = 256,
                                                .max_seq_len = 32,
                                                .init_std = 0.05,
                                                .tied = false});
  ActivationOptions act;
  act.micro_batch = 2;
  act.seq_len = 32;
  act.device = Device::kCUDA;
  act.dtype = DType::kBF16;
  act.fp32_weights = zero == 0;
  act.pooled_grads = zero == 2;
  SelfCommunicator tp("tp"), dp("dp"), norm("norm");
  // One bucket per layer: the embedding, 2 layers, the head.
  LlamaModel model(shape, ModelLayout::Single(shape), act, ModelComms{&tp, nullptr}, 1, 1);
  config::OptimizerConfig oc;
  oc.set_lr(3e-3);
  oc.set_weight_decay(0.1);
  AdamWOptimizer opt(&model.parameters(), oc, zero, OptimizerComms{&dp, &norm});
  opt.InitWeights(5);
  model.OnWeightsNeeded([&](const std::vector<size_t>& t) { opt.WaitForWeights(t); });
  model.OnGradientsNeeded([&](const std::vector<size_t>& t) { opt.GradientsNeeded(t); });
  model.OnGradientsFinal([&](const std::vector<size_t>& t, bool last) { opt.GradientsFinal(t, last); });
  const ParameterSet& p = model.parameters();
  // What the arenas hold is MemoryPerRank's.
  const int64_t pool = static_cast<int64_t>(p.grad_bytes() / sizeof(float));
  const OptimizerMemory m =
      AdamWOptimizer::MemoryPerRank(p.padded_numel(), 1, zero, DType::kBF16, zero == 2 ? pool : -1);
  EXPECT_EQ(m.weights, static_cast<int64_t>(p.param_bytes() + p.compute_bytes()));
  EXPECT_EQ(m.grads, static_cast<int64_t>(p.grad_bytes() + opt.grad_shard_bytes()));
  EXPECT_EQ(m.master, static_cast<int64_t>(opt.master_bytes()));
  EXPECT_EQ(m.moments, static_cast<int64_t>(opt.moment_bytes()));
  if (zero >= 1) {
    EXPECT_EQ(p.param_bytes(), 0u);  // no full f32 weights
  }
  if (zero == 2) {
    EXPECT_LT(pool, p.padded_numel());  // no full gradient arena
  }

  ZeroRun out;
  const float scale = 1.0f / static_cast<float>(ids.size());
  for (int step = 0; step < 3; ++step) {
    model.parameters().ZeroGrads();
    opt.BeginGradientReduction();
    out.losses.push_back(model.ForwardBackward(ids.data(), targets.data(), scale));
    opt.FinishGradientReduction();
    out.norms.push_back(opt.GradNorm());
    opt.Step(3e-3f, ClipFactor(out.norms.back(), 1.0));
  }
  opt.FinishParameterGather();
  out.master.assign(static_cast<size_t>(p.padded_numel()), 0.0f);
  for (const AdamWOptimizer::MomentSlice& s : opt.Moments()) {
    const float* src = zero >= 1 ? s.master : p.padded_params().as<float>() + s.begin;
    CUDA_CHECK(cudaMemcpy(out.master.data() + s.begin, src, static_cast<size_t>(s.end - s.begin) * sizeof(float),
                          cudaMemcpyDeviceToHost));
  }
  out.copy.assign(static_cast<size_t>(p.padded_numel()), 0);
  CUDA_CHECK(cudaMemcpy(out.copy.data(), p.padded_compute().data, out.copy.size() * sizeof(uint16_t),
                        cudaMemcpyDeviceToHost));
  return out;
}

class CudaZeroTest : public testing::RandomTest {};

// Two runs trained bitwise alike: losses, norms, master weights, bf16 copy.
void ExpectSameTraining(const ZeroRun& a, const ZeroRun& b) {
  EXPECT_EQ(a.losses, b.losses);
  EXPECT_EQ(a.norms, b.norms);
  EXPECT_NE(a.losses.front(), a.losses.back());  // it trained
  ASSERT_EQ(a.master.size(), b.master.size());
  for (size_t i = 0; i < a.master.size(); ++i) {
    ASSERT_EQ(a.master[i], b.master[i]) << "master element " << i;
    ASSERT_EQ(a.copy[i], b.copy[i]) << "bf16 element " << i;
  }
}

TEST_F(CudaZeroTest, Bf16ZeroOneOverOneReplicaTrainsLikeZeroZero) {
  LATAM_REQUIRE_GPU();
  const std::vector<int32_t> ids = RandomIds(64, 256), targets = RandomIds(64, 256);
  const ZeroRun a = Train(0, ids, targets), b = Train(1, ids, targets);
  ExpectSameTraining(a, b);
  for (size_t i = 0; i < b.master.size(); ++i) {
    ASSERT_EQ(b.copy[i], BF16::FromFloat(b.master[i]).bits) << "the copy is the master rounded, element " << i;
  }
}

TEST_F(CudaZeroTest, Bf16ZeroTwoOverOneReplicaTrainsLikeZeroOne) {
  LATAM_REQUIRE_GPU();
  const std::vector<int32_t> ids = RandomIds(64, 256), targets = RandomIds(64, 256);
  const ZeroRun a = Train(1, ids, targets), b = Train(2, ids, targets);
  ExpectSameTraining(a, b);
}

}  // namespace
}  // namespace latam
