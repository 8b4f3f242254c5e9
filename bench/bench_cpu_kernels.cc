// CPU kernel throughput on the shapes of a model config.
//
//   bench_cpu_kernels [--dim 256 --heads 8 --kv-heads 4 --ffn 688 --vocab 8192
//                      --seq 256 --batch 8] [--seconds 1] [--doc-len N]
//                     [--attention-only 1]
//
// Prints one JSON object per kernel: achieved GFLOP/s for the GEMMs of one
// training step (the machine's sgemm ceiling on these shapes) and for
// attention forward+backward, and milliseconds for the memory-bound ops.
// --doc-len N runs the attention document-masked over documents of N tokens
// packed back to back (the last one shorter); its GFLOP/s count only the
// visible (query, key) pairs. --attention-only 1 skips every other kernel
// (for long sequences).
// Runs on this process's OpenMP team (OMP_NUM_THREADS or all cores).
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "bench/timing.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/swiglu.h"

namespace {

std::vector<float> Random(size_t n, float scale) {
  std::mt19937 rng(42);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, double> opt{{"dim", 256},    {"heads", 8}, {"kv-heads", 4}, {"ffn", 688},
                                    {"vocab", 8192}, {"seq", 256}, {"batch", 8},    {"seconds", 1.0},
                                    {"doc-len", 0},  {"attention-only", 0}};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string name = std::string(argv[i]).substr(2);
    if (opt.count(name) == 0) {
      std::fprintf(stderr, "bench_cpu_kernels: unknown option %s\n", argv[i]);
      return 2;
    }
    opt[name] = std::atof(argv[i + 1]);
  }
  const int64_t dim = static_cast<int64_t>(opt["dim"]), hq = static_cast<int64_t>(opt["heads"]);
  const int64_t hkv = static_cast<int64_t>(opt["kv-heads"]), ffn = static_cast<int64_t>(opt["ffn"]);
  const int64_t vocab = static_cast<int64_t>(opt["vocab"]), seq = static_cast<int64_t>(opt["seq"]);
  const int64_t batch = static_cast<int64_t>(opt["batch"]), hd = dim / hq, m = batch * seq;
  const int64_t qkv = (hq + 2 * hkv) * hd;
  const double secs = opt["seconds"];
  std::printf("{\"threads\": %d, \"tokens\": %lld, \"dim\": %lld, \"head_dim\": %lld}\n", omp_get_max_threads(),
              static_cast<long long>(m), static_cast<long long>(dim), static_cast<long long>(hd));

  // GEMMs of one layer + head, forward and both backward products.
  struct GemmShape {
    const char* name;
    int64_t in, out;
  };
  const bool attention_only = opt["attention-only"] != 0;
  const int64_t doc_len = static_cast<int64_t>(opt["doc-len"]);
  const std::vector<GemmShape> gemms = {
      {"qkv", dim, qkv}, {"o", hq * hd, dim}, {"gate_up", dim, 2 * ffn}, {"down", ffn, dim}, {"lm_head", dim, vocab}};
  for (const GemmShape& g : attention_only ? std::vector<GemmShape>{} : gemms) {
    auto x = Random(m * g.in, 1.0f), w = Random(g.out * g.in, 0.02f), y = Random(m * g.out, 1.0f);
    auto dx = x, dw = w;
    using latam::Tensor;
    const Tensor xt = Tensor::Of(x.data(), {m, g.in}), wt = Tensor::Of(w.data(), {g.out, g.in});
    const Tensor yt = Tensor::Of(y.data(), {m, g.out}), dxt = Tensor::Of(dx.data(), {m, g.in});
    const Tensor dwt = Tensor::Of(dw.data(), {g.out, g.in});
    const double flops = 2.0 * static_cast<double>(m * g.in * g.out);
    const double fwd = latam::bench::SecondsPerCall([&] { latam::cpu::LinearForward(xt, wt, yt, false); }, secs);
    const double bwd_in =
        latam::bench::SecondsPerCall([&] { latam::cpu::LinearBackwardInput(yt, wt, dxt, false); }, secs);
    const double bwd_w = latam::bench::SecondsPerCall([&] { latam::cpu::LinearBackwardWeight(yt, xt, dwt); }, secs);
    std::printf(
        "{\"kernel\": \"gemm_%s\", \"M\": %lld, \"K\": %lld, \"N\": %lld, \"fwd_gflops\": %.1f, "
        "\"bwd_input_gflops\": %.1f, \"bwd_weight_gflops\": %.1f}\n",
        g.name, static_cast<long long>(m), static_cast<long long>(g.in), static_cast<long long>(g.out),
        flops / fwd / 1e9, flops / bwd_in / 1e9, flops / bwd_w / 1e9);
  }

  {
    auto qkv_buf = Random(m * qkv, 1.0f), out = Random(m * hq * hd, 1.0f), dout = Random(m * hq * hd, 1.0f);
    auto lse = Random(batch * hq * seq, 1.0f), dqkv = qkv_buf;
    std::vector<float> ws(static_cast<size_t>(
        latam::cpu::AttentionWorkspaceElems({static_cast<int>(batch), static_cast<int>(seq), static_cast<int>(hq),
                                             static_cast<int>(hkv), static_cast<int>(hd)},
                                            omp_get_max_threads())));
    latam::AttentionDims d{static_cast<int>(batch), static_cast<int>(seq), static_cast<int>(hq),
                                static_cast<int>(hkv), static_cast<int>(hd)};
    // Documents of doc_len tokens: each query sees t - start + 1 keys.
    std::vector<int32_t> docs;
    double pairs = static_cast<double>(batch * hq) * static_cast<double>(seq) * (seq + 1) / 2.0;
    if (doc_len > 0) {
      docs.resize(static_cast<size_t>(m));
      pairs = 0.0;
      for (int64_t i = 0; i < m; ++i) {
        const int64_t t = i % seq;
        docs[static_cast<size_t>(i)] = static_cast<int32_t>(t / doc_len * doc_len);
        pairs += static_cast<double>(hq) * static_cast<double>(t - t / doc_len * doc_len + 1);
      }
      d.doc_start = docs.data();
    }
    using latam::Tensor;
    const Tensor q = Tensor::Of(qkv_buf.data(), {m, qkv}), o = Tensor::Of(out.data(), {m, hq * hd});
    const Tensor l = Tensor::Of(lse.data(), {batch, hq, seq}), dq = Tensor::Of(dqkv.data(), {m, qkv});
    const Tensor dO = Tensor::Of(dout.data(), {m, hq * hd});
    const Tensor w = Tensor::Of(ws.data(), {static_cast<int64_t>(ws.size())});
    // Causal: QK^T and PV each cost 2 * hd FLOPs per (query, visible key);
    // the backward recomputes QK^T and adds four products (2.5x forward).
    const double fwd_flops = 4.0 * static_cast<double>(hd) * pairs;
    const double fwd = latam::bench::SecondsPerCall([&] { latam::cpu::AttentionForward(q, d, o, l, w); }, secs);
    const double bwd =
        latam::bench::SecondsPerCall([&] { latam::cpu::AttentionBackward(q, o, dO, l, d, dq, w); }, secs);
    std::printf(
        "{\"kernel\": \"attention\", \"seq\": %lld, \"doc_len\": %lld, \"fwd_ms\": %.3f, \"bwd_ms\": %.3f, "
        "\"fwd_gflops\": %.1f, \"bwd_gflops\": %.1f}\n",
        static_cast<long long>(seq), static_cast<long long>(doc_len), fwd * 1e3, bwd * 1e3, fwd_flops / fwd / 1e9,
        2.5 * fwd_flops / bwd / 1e9);
  }
  if (attention_only) return 0;

  {
    auto x = Random(m * dim, 1.0f), w = Random(dim, 1.0f), y = x, rstd = Random(m, 1.0f), dw = w;
    using latam::Tensor;
    const Tensor xt = Tensor::Of(x.data(), {m, dim}), yt = Tensor::Of(y.data(), {m, dim});
    const Tensor wt = Tensor::Of(w.data(), {dim}), rt = Tensor::Of(rstd.data(), {m}),
                 dwt = Tensor::Of(dw.data(), {dim});
    const double fwd = latam::bench::SecondsPerCall([&] { latam::cpu::RmsNormForward(xt, wt, 1e-5f, yt, rt); }, secs);
    const double bwd =
        latam::bench::SecondsPerCall([&] { latam::cpu::RmsNormBackward(xt, xt, wt, rt, yt, false, dwt); }, secs);
    std::printf("{\"kernel\": \"rmsnorm\", \"fwd_ms\": %.3f, \"bwd_ms\": %.3f}\n", fwd * 1e3, bwd * 1e3);
  }
  {
    auto gu = Random(m * 2 * ffn, 2.0f), act = Random(m * ffn, 1.0f), dgu = gu;
    using latam::Tensor;
    const Tensor g = Tensor::Of(gu.data(), {m, 2 * ffn}), a = Tensor::Of(act.data(), {m, ffn});
    const Tensor dg = Tensor::Of(dgu.data(), {m, 2 * ffn});
    const double fwd = latam::bench::SecondsPerCall([&] { latam::cpu::SwigluForward(g, a); }, secs);
    const double bwd = latam::bench::SecondsPerCall([&] { latam::cpu::SwigluBackward(a, g, dg); }, secs);
    std::printf("{\"kernel\": \"swiglu\", \"fwd_ms\": %.3f, \"bwd_ms\": %.3f}\n", fwd * 1e3, bwd * 1e3);
  }
  {
    auto logits = Random(m * vocab, 3.0f);
    std::vector<int32_t> targets(m, 1);
    std::vector<float> row_max(m), sumexp(m), tlogit(m), lse(m);
    using latam::Tensor;
    const Tensor lt = Tensor::Of(logits.data(), {m, vocab}), tg = Tensor::Of(targets.data(), {m});
    // One rank's three phases (no combining): max, sum of exp, gradient.
    const double t = latam::bench::SecondsPerCall(
        [&] {
          latam::cpu::LogitsRowMax(lt, Tensor::Of(row_max.data(), {m}));
          latam::cpu::LogitsRowSumExp(lt, Tensor::Of(row_max.data(), {m}), tg, 0, vocab, Tensor::Of(sumexp.data(), {m}),
                                      Tensor::Of(tlogit.data(), {m}));
          for (int64_t r = 0; r < m; ++r) lse[r] = row_max[r] + std::log(sumexp[r]);
          latam::cpu::SoftmaxCrossEntropyBackward(lt, tg, 0, Tensor::Of(lse.data(), {m}), 1.0f);
        },
        secs);
    std::printf("{\"kernel\": \"cross_entropy\", \"ms\": %.3f, \"gelem_per_s\": %.2f}\n", t * 1e3,
                static_cast<double>(m * vocab) / t / 1e9);
  }
  return 0;
}
