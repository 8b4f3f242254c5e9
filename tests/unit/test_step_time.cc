// The step-time model (trainer/step_time.h): every term on a small case
// computed by hand, the pipeline bubble, the bytes per group against the
// analytic counts tests/mpi/test_layouts.cc checks on real runs, and
// `--plan --gpu` on the presets.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/layout.h"
#include "model/parameters.h"
#include "tests/test_util.h"
#include "trainer/config.h"
#include "trainer/plan.h"
#include "trainer/step_time.h"

namespace latam {
namespace {

// Round numbers, so that every term can be worked out on paper.
Hardware PaperMachine() {
  Hardware hw;
  hw.gpu = "paper";
  hw.network = "paper";
  hw.gpus_per_node = 4;
  hw.peak_flops = 1e12;
  hw.achievable_fraction = 0.5;
  hw.capacity_bytes = 1e9;
  hw.hbm_bytes_per_s = 1e9;
  hw.hbm_fraction = 1.0;
  hw.nvlink_bus_bytes_per_s = 1e9;
  hw.network_bus_bytes_per_s = 1e8;
  hw.pp_exposed_fraction = 0.5;
  hw.optimizer_bytes_per_parameter = 32;
  return hw;
}

// TP 2 x PP 2 x DP 2, ZeRO-1, 4 micro-batches of 1000 tokens, dim 100,
// bf16; the first stage of two: 2 layers, the embedding, one forward send.
StepInput PaperStep() {
  StepInput in;
  in.tp = 2;
  in.pp = 2;
  in.dp = 2;
  in.zero_stage = 1;
  in.micro_batches = 4;
  in.tokens_per_micro_batch = 1000;
  in.dim = 100;
  in.activation_bytes = 2;
  in.tokens_per_step = 8000;
  in.model_flops_per_step = 1.6e10;
  StageLoad s;
  s.stage = 0;
  s.layers = 2;
  s.sends_forward = 1;
  s.embedding = true;
  s.flops_per_micro_batch = 1e9;
  s.parameters = 1000000;
  s.last_bucket_parameters = 250000;
  in.stages.push_back(s);
  return in;
}

TEST(StepTimeTest, EveryTermOfASmallCaseByHand) {
  const Hardware hw = PaperMachine();
  const StepTime t = StepModel(PaperStep(), hw);
  const double tol = 1e-12;
  // compute: 1e9 FLOPs / (1e12 x 0.5) = 2 ms per micro-batch, x 4.
  EXPECT_NEAR(t.compute_s, 8e-3, tol);
  EXPECT_NEAR(t.recompute_s, 0.0, tol);
  // TP (NVLink, 2 ranks): (4 x 2 layers + 1 embedding) x 1000 x 100 x 2 B =
  // 1.8e6 B per micro-batch; ring all-reduce 2 (2-1)/2 x 1.8e6 / 1e9 =
  // 1.8 ms; all exposed.
  EXPECT_EQ(t.tp.link, "nvlink");
  EXPECT_EQ(t.tp.bytes, 7200000);
  EXPECT_NEAR(t.tp.seconds, 7.2e-3, tol);
  EXPECT_NEAR(t.tp.exposed_s, 7.2e-3, tol);
  // PP (T P = 4 <= 4 GPUs per node: NVLink): one send of 2e5 B per
  // micro-batch, 0.2 ms; half exposed.
  EXPECT_EQ(t.pp.link, "nvlink");
  EXPECT_EQ(t.pp.bytes, 800000);
  EXPECT_NEAR(t.pp.seconds, 8e-4, tol);
  EXPECT_NEAR(t.pp.exposed_s, 4e-4, tol);
  EXPECT_NEAR(t.pp.overlapped_s, 4e-4, tol);
  // Per micro-batch 2 + 1.8 + 0.1 = 3.9 ms; bubble (2-1)/(1 x 4) of 4 x 3.9.
  EXPECT_NEAR(t.bubble_s, 3.9e-3, tol);
  // DP (T P D = 8 > 4: network, 1e8 B/s): reduce-scatter (1/2) x 4e6 / 1e8
  // = 20 ms, its last bucket (1/2) x 1e6 / 1e8 = 5 ms; the backward pass of
  // the last micro-batch (2/3 of 3.9 ms = 2.6 ms) hides 2.6 ms of the other
  // 15: exposed 5 + 12.4 = 17.4 ms. The all-gather of the bf16 compute copy,
  // (1/2) x 2e6 / 1e8 = 10 ms, runs into the next step's first forward
  // (1/3 of 3.9 ms = 1.3 ms): its first bucket (the embedding's, 2.5 ms)
  // and 10 - 2.5 - 1.3 = 6.2 ms of the rest are exposed, 8.7 ms.
  EXPECT_EQ(t.dp.link, "network");
  EXPECT_EQ(t.dp.bytes, 6000000);
  EXPECT_NEAR(t.dp.seconds, 0.03, tol);
  EXPECT_NEAR(t.dp.exposed_s, 0.0174 + 0.0087, tol);
  EXPECT_NEAR(t.dp.overlapped_s, 0.0026 + 0.0013, tol);
  // Optimizer: 1e6 / 2 updated parameters x 32 B / 1e9 B/s = 16 ms.
  EXPECT_NEAR(t.optimizer_s, 0.016, tol);
  const double step = 8e-3 + 7.2e-3 + 4e-4 + 3.9e-3 + 0.0261 + 0.016;
  EXPECT_NEAR(t.step_s, step, tol);
  EXPECT_NEAR(t.tokens_per_s_per_gpu, 8000.0 / step / 8.0, 1e-9);
  EXPECT_NEAR(t.mfu, 1.6e10 / (step * 8.0 * 1e12), 1e-12);
  EXPECT_NEAR(t.days_for_300b_tokens, 300e9 / (8000.0 / step) / 86400.0, 1e-6);
}

TEST(StepTimeTest, FullRecomputeAddsTheForwardAndWidensTheOverlapWindow) {
  Hardware hw = PaperMachine();
  StepInput in = PaperStep();
  in.recompute_full = true;
  // The recomputed forward is a third of the usual 6N training FLOPs.
  in.stages[0].flops_per_micro_batch = 4e9 / 3.0;
  in.stages[0].recompute_flops_per_micro_batch = 1e9 / 3.0;
  const StepTime t = StepModel(in, hw);
  EXPECT_NEAR(t.compute_s, 4.0 * (4e9 / 3.0) / 5e11, 1e-12);
  EXPECT_NEAR(t.recompute_s, 4.0 * (1e9 / 3.0) / 5e11, 1e-12);
  // 6 all-reduces per layer: (6 x 2 + 1) x 2e5 B per micro-batch.
  EXPECT_EQ(t.tp.bytes, 4 * 13 * 200000);
  // Backward share: 1 - (F - R) / (3F) = 3/4 of the micro-batch time; the
  // next forward, which hides the all-gather, the other 1/4.
  const double t_mb = (4e9 / 3.0) / 5e11 + 13 * 200000 / 1e9 + 0.5 * 2e-4;
  const double reduce = 0.02, last = 0.005, window = 0.75 * t_mb;
  const double gather = 0.01, first = 0.0025, forward = 0.25 * t_mb;
  EXPECT_NEAR(t.dp.exposed_s, last + (reduce - last - window) + first + (gather - first - forward), 1e-12);
}

// ZeRO-1 all-gathers the weights' compute copy (bf16: 2 bytes a parameter;
// f32 compute: 4), and the next step's forward waits for each bucket only
// when it reaches it: the first bucket is exposed, the rest runs behind the
// first micro-batch's forward pass.
TEST(StepTimeTest, ZeroOneGathersTheComputeCopyBehindTheNextForward) {
  const Hardware hw = PaperMachine();
  // The paper case: reduce-scatter 20 ms (17.4 exposed), 3.9 ms per
  // micro-batch, of which the forward pass is 1.3 ms.
  const double t_mb = 3.9e-3, reduce_exposed = 0.0174;
  for (const double w : {2.0, 4.0}) {
    StepInput in = PaperStep();
    in.weight_bytes = w;
    const StepTime t = StepModel(in, hw);
    const double gather = 0.5 * w * 1e6 / 1e8, first = 0.5 * w * 250000 / 1e8;
    const double exposed = first + std::max(0.0, gather - first - t_mb / 3.0);
    EXPECT_EQ(t.dp.bytes, 4000000 + static_cast<int64_t>(w * 1e6)) << "w = " << w;
    EXPECT_EQ(StepGroupBytes(in, in.stages[0]).dp_all_gather, static_cast<int64_t>(w * 1e6)) << "w = " << w;
    EXPECT_NEAR(t.dp.seconds, 0.02 + gather, 1e-12) << "w = " << w;
    EXPECT_NEAR(t.dp.exposed_s, reduce_exposed + exposed, 1e-12) << "w = " << w;
    EXPECT_LT(t.dp.exposed_s, 0.02 + gather) << "w = " << w;
  }
  // A forward longer than the gather hides all of it but the first bucket.
  StepInput in = PaperStep();
  in.stages[0].flops_per_micro_batch = 1e11;  // 200 ms per micro-batch
  const StepTime t = StepModel(in, hw);
  EXPECT_NEAR(t.dp.exposed_s, 0.005 + 0.0025, 1e-12);
  EXPECT_NEAR(t.dp.overlapped_s, 0.015 + 0.0075, 1e-12);
}

// Sequence parallelism: each pipeline message is the rank's row shard, and
// SELECTIVE recompute all-gathers the two recomputed norm outputs of every
// layer again before its backward.
TEST(StepTimeTest, SequenceParallelShardsPipelineSendsAndSelectiveRegathersNorms) {
  Hardware hw = PaperMachine();
  hw.nvlink_latency_s = 1e-6;
  StepInput in = PaperStep();
  in.sequence_parallel = true;
  const StepTime t = StepModel(in, hw);
  const double tol = 1e-12;
  // PP: one send of r / T = 500 rows x 100 x 2 B = 1e5 B per micro-batch,
  // 0.1 ms + 1 us.
  EXPECT_EQ(t.pp.bytes, 4 * 100000);
  EXPECT_NEAR(t.pp.seconds, 4 * (1e-4 + 1e-6), tol);
  EXPECT_NEAR(t.pp.exposed_s, 2 * (1e-4 + 1e-6), tol);
  // TP: the 9 [r, d] sums of the paper case (4 x 2 layers + embedding)
  // become 9 reduce-scatters and 9 all-gathers of 2e5 B, (1/2) x 1.8e6 /
  // 1e9 = 0.9 ms each kind: 18 collectives per micro-batch. Once per step
  // the 2 x 2 norm gains' gradients, 100 f32 each, are all-reduced: 1600 B,
  // 4 collectives.
  const GroupBytes b = StepGroupBytes(in, in.stages[0]);
  EXPECT_EQ(b.tp_reduce_scatter, 4 * 1800000);
  EXPECT_EQ(b.tp_all_gather, 4 * 1800000);
  EXPECT_EQ(b.tp_all_reduce, 1600);
  EXPECT_EQ(t.tp.bytes, 2 * 7200000 + 1600);
  EXPECT_NEAR(t.tp.seconds, 4 * (1.8e-3 + 18e-6) + (1600 / 1e9 + 4e-6), tol);
  EXPECT_NEAR(t.tp.exposed_s, t.tp.seconds, tol);
  // SELECTIVE: 2 more all-gathers of 2e5 B per layer and micro-batch.
  in.recompute_selective = true;
  const StepTime s = StepModel(in, hw);
  EXPECT_EQ(StepGroupBytes(in, in.stages[0]).tp_all_gather, 4 * (1800000 + 800000));
  EXPECT_EQ(StepGroupBytes(in, in.stages[0]).tp_reduce_scatter, 4 * 1800000);
  EXPECT_NEAR(s.tp.seconds, 4 * (1.8e-3 + 0.4e-3 + 22e-6) + (1600 / 1e9 + 4e-6), tol);
  // Without sequence parallelism SELECTIVE communicates nothing more, and
  // the sends carry whole rows.
  in.sequence_parallel = false;
  const StepTime n = StepModel(in, hw);
  EXPECT_EQ(n.tp.bytes, 7200000);
  EXPECT_NEAR(n.tp.seconds, 4 * (1.8e-3 + 9e-6), tol);
  EXPECT_EQ(n.pp.bytes, 4 * 200000);
}

// ZeRO-2 reduce-scatters every micro-batch's gradients as its backward pass
// finishes them, each behind that backward pass, and gathers as ZeRO-1.
TEST(StepTimeTest, ZeroTwoReduceScattersEveryMicroBatch) {
  const Hardware hw = PaperMachine();
  StepInput in = PaperStep();
  in.zero_stage = 2;
  const GroupBytes b = StepGroupBytes(in, in.stages[0]);
  EXPECT_EQ(b.dp_reduce_scatter, 4 * 4000000);
  EXPECT_EQ(b.dp_all_gather, 2000000);
  EXPECT_EQ(b.dp_all_reduce, 0);
  const StepTime t = StepModel(in, hw);
  const double tol = 1e-12;
  // Per micro-batch: reduce-scatter 20 ms, 17.4 exposed (the paper case);
  // the all-gather 10 ms, 8.7 exposed, once.
  EXPECT_EQ(t.dp.bytes, 4 * 4000000 + 2000000);
  EXPECT_NEAR(t.dp.seconds, 4 * 0.02 + 0.01, tol);
  EXPECT_NEAR(t.dp.exposed_s, 4 * 0.0174 + 0.0087, tol);
  EXPECT_NEAR(t.dp.overlapped_s, 4 * 0.0026 + 0.0013, tol);
  // The update is ZeRO-1's: parameters / D.
  EXPECT_NEAR(t.optimizer_s, 0.016, tol);
  const double step = 8e-3 + 7.2e-3 + 4e-4 + 3.9e-3 + 4 * 0.0174 + 0.0087 + 0.016;
  EXPECT_NEAR(t.step_s, step, tol);
}

TEST(StepTimeTest, BubbleIsPMinusOneOverVirtualStagesTimesMicroBatches) {
  EXPECT_DOUBLE_EQ(BubbleFraction(1, 1, 8), 0.0);
  EXPECT_DOUBLE_EQ(BubbleFraction(4, 1, 8), 3.0 / 8.0);
  EXPECT_DOUBLE_EQ(BubbleFraction(4, 5, 32), 3.0 / 160.0);
  Hardware hw = PaperMachine();
  hw.pp_exposed_fraction = 0.0;  // the micro-batch time is its compute alone
  for (int v : {1, 2, 4}) {
    StepInput in;
    in.pp = 4;
    in.virtual_stages = v;
    in.micro_batches = 8;
    in.tokens_per_micro_batch = 10;
    in.dim = 10;
    in.tokens_per_step = 80;
    StageLoad s;
    s.layers = 4;
    s.sends_forward = v;
    s.sends_backward = v;
    s.flops_per_micro_batch = 1e9;
    in.stages.push_back(s);
    const StepTime t = StepModel(in, hw);
    EXPECT_NEAR(t.bubble_s, 3.0 / (v * 8.0) * t.compute_s, 1e-15) << "V = " << v;
    EXPECT_NEAR(t.step_s, t.compute_s + t.bubble_s + t.optimizer_s, 1e-15) << "V = " << v;
  }
}

TEST(StepTimeTest, CollectivesFollowTheRingBusBandwidthConvention) {
  EXPECT_DOUBLE_EQ(CollectiveSeconds(Collective::kAllReduce, 8e9, 8, 1e9, 0.0), 2.0 * 7.0 / 8.0 * 8.0);
  EXPECT_DOUBLE_EQ(CollectiveSeconds(Collective::kReduceScatter, 8e9, 8, 1e9, 1e-3), 7.0 + 1e-3);
  EXPECT_DOUBLE_EQ(CollectiveSeconds(Collective::kAllGather, 8e9, 4, 1e9, 0.0), 6.0);
  EXPECT_DOUBLE_EQ(CollectiveSeconds(Collective::kSend, 8e9, 2, 1e9, 0.0), 8.0);
  EXPECT_DOUBLE_EQ(CollectiveSeconds(Collective::kAllReduce, 8e9, 1, 1e9, 1.0), 0.0);
}

// The layouts of tests/mpi/test_layouts.cc (its tiny model and batch), as
// the plan describes each stage: its bytes per group equal that test's
// formulas, worked out here from the stage's layout.
TEST(StepTimeTest, BytesPerGroupMatchTheLayoutTestsCounts) {
  using config::TrainConfig;
  struct Case {
    int tp, pp, dp, vs, zero;
    TrainConfig::Recompute recompute;
    bool sp;
  };
  for (const Case& k : std::vector<Case>{{2, 2, 2, 1, 1, TrainConfig::NONE, false},
                                         {1, 4, 2, 2, 0, TrainConfig::NONE, false},
                                         {4, 2, 1, 2, 0, TrainConfig::NONE, false},
                                         {2, 2, 2, 1, 0, TrainConfig::FULL, false},
                                         {2, 1, 4, 1, 1, TrainConfig::NONE, false},
                                         {2, 2, 2, 1, 1, TrainConfig::SELECTIVE, false},
                                         {2, 2, 2, 1, 1, TrainConfig::NONE, true},
                                         {2, 2, 2, 1, 1, TrainConfig::SELECTIVE, true},
                                         {4, 2, 1, 2, 0, TrainConfig::FULL, true}}) {
    Config c;
    *c.mutable_model() = testing::TinyModelConfig(false);
    auto* p = c.mutable_parallel();
    p->set_tensor(k.tp);
    p->set_pipeline(k.pp);
    p->set_data(k.dp);
    p->set_virtual_stages(k.vs);
    p->set_zero_stage(k.zero);
    p->set_sequence_parallel(k.sp);
    c.mutable_data()->set_seq_len(16);
    c.mutable_data()->set_tokenizer("t.json");
    c.mutable_data()->add_train()->set_path("x.bin");
    auto* t = c.mutable_train();
    t->set_steps(6);
    t->set_micro_batch_size(2);
    t->set_global_batch_size(16);
    t->set_run_dir("runs/x");
    t->set_recompute(k.recompute);
    const std::string name = "tp" + std::to_string(k.tp) + " pp" + std::to_string(k.pp) + " dp" +
                             std::to_string(k.dp) + " vs" + std::to_string(k.vs) + " zero" + std::to_string(k.zero) +
                             " " + TrainConfig::Recompute_Name(k.recompute) + " sp" + std::to_string(k.sp);
    auto in = PlanStepInput(c);
    ASSERT_TRUE(in.ok()) << name << ": " << in.status().message();
    EXPECT_EQ(in->activation_bytes, 4.0) << name;  // the CPU computes in f32
    EXPECT_EQ(in->weight_bytes, 4.0) << name;      // and its compute copy is f32
    EXPECT_EQ(in->sequence_parallel, k.sp) << name;
    EXPECT_EQ(in->recompute_selective, k.recompute == TrainConfig::SELECTIVE) << name;
    EXPECT_EQ(in->recompute_full, k.recompute == TrainConfig::FULL) << name;
    const ModelShape shape = ModelShape::FromConfig(c.model());
    const int64_t m = 2 * 16, dim = shape.dim, micro_batches = 16 / (2 * k.dp);
    ASSERT_EQ(in->micro_batches, micro_batches) << name;
    for (const StageLoad& stage : in->stages) {
      const ModelLayout layout = ModelLayout::Make(shape, k.tp, 0, k.pp, stage.stage, k.vs);
      int64_t layers = 0, non_first = 0, non_last = 0;
      for (const ChunkInfo& ch : layout.chunks) {
        layers += ch.layer_end - ch.layer_begin;
        non_first += ch.first ? 0 : 1;
        non_last += ch.last ? 0 : 1;
      }
      // test_layouts.cc's counts, in f32 elements.
      const int64_t layer_passes = k.recompute == TrainConfig::FULL ? 3 : 2;
      int64_t tp_bytes = 0, rs_bytes = 0, ag_bytes = 0, per_step_bytes = 0;
      if (!k.sp) {
        tp_bytes = 2 * layer_passes * layers * m * dim;
        if (layout.holds_embedding()) tp_bytes += m * dim;
        if (layout.holds_head()) tp_bytes += 3 * m + m * dim;
      } else {
        rs_bytes = ag_bytes = 2 * layer_passes * layers * m * dim;
        if (k.recompute == TrainConfig::SELECTIVE) ag_bytes += 2 * layers * m * dim;
        if (layout.holds_embedding()) rs_bytes += m * dim, ag_bytes += m * dim;
        if (layout.holds_head()) tp_bytes += 3 * m, rs_bytes += m * dim, ag_bytes += m * dim;
        per_step_bytes = (2 * layers + (layout.holds_head() ? 1 : 0)) * dim;
      }
      const int64_t rows = k.sp ? m / k.tp : m;
      const GroupBytes b = StepGroupBytes(*in, stage);
      const std::string at = name + " stage " + std::to_string(stage.stage);
      EXPECT_EQ(b.tp_all_reduce, k.tp > 1 ? 4 * (micro_batches * tp_bytes + per_step_bytes) : 0) << at;
      EXPECT_EQ(b.tp_reduce_scatter, k.tp > 1 ? 4 * micro_batches * rs_bytes : 0) << at;
      EXPECT_EQ(b.tp_all_gather, k.tp > 1 ? 4 * micro_batches * ag_bytes : 0) << at;
      EXPECT_EQ(b.pp_send, k.pp > 1 ? 4 * micro_batches * (non_first + non_last) * rows * dim : 0) << at;
      // DP: the stage's gradients; ZeRO-1 pads each bucket to a multiple of
      // D elements (test_layouts counts the padded buffer), which the plan
      // leaves out: at most D - 1 elements per bucket. The all-gather moves
      // the compute copy: f32 here, 4 bytes per element like the gradients.
      ParameterSet params(LlamaParameterSpecs(shape, layout), k.zero == 1 ? k.dp : 1);
      if (k.zero == 0) {
        EXPECT_EQ(b.dp_all_reduce, k.dp > 1 ? 4 * params.numel() : 0) << at;
      } else {
        EXPECT_LE(b.dp_reduce_scatter, 4 * params.padded_numel()) << at;
        EXPECT_GE(b.dp_reduce_scatter,
                  4 * (params.padded_numel() - static_cast<int64_t>(params.buckets().size()) * (k.dp - 1)))
            << at;
        EXPECT_EQ(b.dp_all_gather, b.dp_reduce_scatter) << at;
      }
    }
  }
}

// The p5 preset trains in bf16 with sequence parallelism and SELECTIVE
// recompute: the plan tells the step model so, and the ZeRO-1 all-gather
// moves 2 bytes per parameter.
TEST(StepTimeTest, PlanPassesComputeDtypeSequenceParallelismAndRecompute) {
  auto c = LoadConfigFile(testing::SourcePath("configs/latam-gpt-70b-p5.textproto"));
  ASSERT_TRUE(c.ok()) << c.status().message();
  auto in = PlanStepInput(*c);
  ASSERT_TRUE(in.ok()) << in.status().message();
  EXPECT_EQ(in->weight_bytes, 2.0);
  EXPECT_EQ(in->activation_bytes, 2.0);
  EXPECT_TRUE(in->sequence_parallel);
  EXPECT_TRUE(in->recompute_selective);
  EXPECT_FALSE(in->recompute_full);
  ASSERT_EQ(in->zero_stage, 1);
  for (const StageLoad& stage : in->stages) {
    const GroupBytes b = StepGroupBytes(*in, stage);
    EXPECT_EQ(b.dp_all_gather, 2 * stage.parameters) << "stage " << stage.stage;
    EXPECT_EQ(b.dp_reduce_scatter, 4 * stage.parameters) << "stage " << stage.stage;
    EXPECT_EQ(b.pp_send, (stage.sends_forward + stage.sends_backward) * in->micro_batches *
                             (in->tokens_per_micro_batch / in->tp) * in->dim * 2)
        << "stage " << stage.stage;
  }
}

// Each preset fits its GPU with at least 10% headroom, plans the whole
// cluster, and the step time's parts add up. (No preset needs a feature
// validation still rejects, so none is tolerated.)
TEST(StepTimeTest, PresetsFitTheirGpusWithTenPercentHeadroom) {
  struct Preset {
    const char* file;
    const char* gpu;
    const char* network;
    int64_t world;
  };
  for (const Preset& preset : std::vector<Preset>{{"configs/latam-gpt-70b.textproto", "h200", "ib", 96},
                                                  {"configs/latam-gpt-70b-32k.textproto", "h200", "ib", 96},
                                                  {"configs/latam-gpt-70b-32k-cp.textproto", "h200", "ib", 96},
                                                  {"configs/latam-gpt-70b-p5.textproto", "h100", "efa", 128}}) {
    auto c = LoadConfigFile(testing::SourcePath(preset.file));
    ASSERT_TRUE(c.ok()) << c.status().message();
    PlanOptions options;
    options.gpu = preset.gpu;
    options.network = preset.network;
    auto plan = PlanJson(*c, options);
    ASSERT_TRUE(plan.ok()) << preset.file << ": " << plan.status().message();
    const auto j = nlohmann::json::parse(*plan);
    EXPECT_EQ(j["layout"]["world_size"].get<int64_t>(), preset.world) << preset.file;
    EXPECT_EQ(c->train().global_batch_size() % j["layout"]["data"].get<int64_t>(), 0) << preset.file;
    EXPECT_TRUE(j["fits"].get<bool>()) << preset.file;
    EXPECT_GE(j["headroom_fraction"].get<double>(), 0.10) << preset.file;
    const auto& st = j["step_time"];
    const double sum = st["compute_s"].get<double>() + st["bubble_s"].get<double>() +
                       st["exposed_communication_s"].get<double>() + st["optimizer_s"].get<double>();
    EXPECT_NEAR(st["step_s"].get<double>(), sum, 1e-9 * sum) << preset.file;
    EXPECT_GT(st["mfu"].get<double>(), 0.2) << preset.file;
    EXPECT_LT(st["mfu"].get<double>(), 0.55) << preset.file;
  }
}

TEST(StepTimeTest, UnknownMachinesAreRejected) {
  EXPECT_FALSE(MakeHardware("a100", 8, "ib").ok());
  EXPECT_FALSE(MakeHardware("h100", 8, "ethernet").ok());
  EXPECT_FALSE(MakeHardware("h100", 0, "ib").ok());
  auto hw = MakeHardware("h200", 8, "efa");
  ASSERT_TRUE(hw.ok());
  EXPECT_EQ(hw->capacity_bytes, 141e9);
  EXPECT_EQ(hw->peak_flops, 989e12);
}

}  // namespace
}  // namespace latam

namespace latam {
namespace {

// The command line: --gpu adds the fit and the step time; bad machine flags
// exit 2 naming the flag.
TEST(StepTimeTest, PlanFlagsOnTheCommandLine) {
  const std::filesystem::path dir = testing::FreshTestDir("step_time_cli");
  const std::string train = testing::BinPath("latam-train") + " --config configs/latam-gpt-70b-p5.textproto";
  const auto ok = testing::RunCommand(train + " --plan --gpu h100 --network efa --gpus-per-node 8", LATAM_SOURCE_DIR, dir);
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  const auto j = nlohmann::json::parse(ok.out);
  EXPECT_EQ(j["step_time"]["network"].get<std::string>(), "efa");
  EXPECT_EQ(j["memory_capacity_bytes"].get<int64_t>(), 80000000000);
  EXPECT_TRUE(j.contains("headroom_fraction"));
  const auto plain = testing::RunCommand(train + " --plan", LATAM_SOURCE_DIR, dir);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_FALSE(nlohmann::json::parse(plain.out).contains("step_time"));
  for (const auto& [args, expected] : std::vector<std::pair<std::string, std::string>>{
           {" --plan --gpu a100", "--gpu must be h100 or h200"},
           {" --plan --gpu h100 --network ethernet", "--network must be ib or efa"},
           {" --plan --gpu h100 --gpus-per-node 0", "--gpus-per-node must be a positive integer"},
           {" --plan --network efa", "need --gpu"},
           {" --gpu h100", "go with --plan"}}) {
    const auto r = testing::RunCommand(train + args, LATAM_SOURCE_DIR, dir);
    EXPECT_EQ(r.exit_code, 2) << args;
    EXPECT_NE(r.err.find(expected), std::string::npos) << args << ": " << r.err;
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace latam
