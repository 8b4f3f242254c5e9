// CUDA kernel throughput on the training shapes of llama3-1b and llama3-8b.
//
//   bench_cuda_kernels [--quick | --tiny] [--seqs T,T,...] [--filter SUBSTRING] [--reps N] [--warmup N]
//
// Prints one JSON object per line: first the device, then one line per
// (kernel, shape) with the median milliseconds of `reps` timed calls (CUDA
// events, after `warmup` untimed calls) and the achieved rate:
//   - "tflops" for the bf16 GEMMs (2 M N K per product) and for attention,
//     counted as in the FlashAttention papers: forward 4 B T^2 H d, halved
//     for causal; backward 2.5x the forward;
//   - "gbps" for the memory-bound kernels: the fewest bytes each must move
//     (every input read once, every output written once), over the time.
// "kernel" and "shape" name a row; bench/torch_peer.py prints the same names
// for the PyTorch versions, and bench/run_gpu_bench.sh joins the two. "impl"
// is "ours" for every row but the simple attention kernel's ("ours-simple")
// and the Hopper attention forwards' ("ours-wgmma", "ours-wgmma-tma");
// attention rows also carry "variant": "latam-flash" (the tensor-core
// kernel, kernels/cuda/flash_attention.h), "latam-flash-wgmma[-tma]" (its
// wgmma forwards, kernels/cuda/flash_attention_wgmma.cuh) or "latam-simple"
// (kernels/cuda/attention.h).
//
// --quick keeps the llama3-1b shapes and fewer attention shapes (T 2k and 8k,
// head dim 128), with fewer repetitions; --seqs sets the attention sequence
// lengths (grouped-query rows keep those of 2k and 8k); --tiny shrinks every
// shape to a toy model (dim 256, 1024 tokens of vocabulary, 64 rows,
// attention over 256 tokens) with one repetition, for checking the program
// and the scripts around it on the emulated GPU (bench_cuda_kernels_emulated,
// built with the tests), where the numbers mean nothing; --filter keeps the rows whose
// "kernel shape" contains the substring (and allocates nothing for the
// others), e.g. "attention_" for the attention rows alone; given more than
// once, a row must contain every substring ("--filter attention_ --filter
// full": the non-causal attention rows). With no CUDA GPU visible it says so
// on stderr and exits 0.
//
// Inputs are random (never zeros) and every buffer is far larger than the L2
// cache, except the small per-row statistics: the memory-bound kernels run
// over 16384 rows so that one pass does not fit in the 50 MB L2 of an H100.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cross_entropy.h"
#include "core/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/fused_norm.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/optimizer.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/swiglu.h"
#include "kernels/rope.h"
#include "core/tensor.h"

namespace {

using latam::Arena;
using latam::DType;
using latam::Shape;
using latam::Tensor;

struct ModelShape {
  const char* name;
  int64_t dim;
  int64_t ffn;
  int64_t heads;
  int64_t kv_heads;
  int64_t vocab;
  int layers;
  int64_t head_dim() const { return dim / heads; }
};

constexpr ModelShape kLlama1B{"llama3-1b", 2048, 8192, 32, 8, 128256, 16};
constexpr ModelShape kLlama8B{"llama3-8b", 4096, 14336, 32, 8, 128256, 32};
constexpr ModelShape kTiny{"tiny", 256, 512, 4, 2, 1024, 2};

struct Options {
  bool quick = false;
  bool tiny = false;
  std::vector<std::string> filters;  // a row must contain each
  int reps = 20;
  int warmup = 3;
  // The models whose layer shapes are timed; the first one also gives the
  // loss, optimizer and per-head shapes.
  std::vector<ModelShape> models{kLlama1B, kLlama8B};
  // GEMM tokens (one training micro-batch), rows of the memory-bound
  // kernels, and rows of the cross-entropy benchmark.
  int64_t gemm_tokens = 8192;
  int64_t rows = 16384;
  int64_t loss_rows = 4096;
  // Attention: B * T query rows, H * d model width, the sequence lengths T,
  // those that also get grouped-query rows, and the head dims.
  int64_t attention_tokens = 16384;
  int64_t attention_width = 2048;
  std::vector<int64_t> seqs{512, 1024, 2048, 4096, 8192, 16384};
  std::vector<int64_t> gqa_seqs{2048, 8192};
  std::vector<int64_t> head_dims{64, 128};
};

bool Wanted(const Options& opt, const std::string& kernel, const std::string& shape) {
  const std::string row = kernel + " " + shape;
  for (const std::string& f : opt.filters) {
    if (row.find(f) == std::string::npos) return false;
  }
  return true;
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    if (static_cast<unsigned char>(c) >= 0x20) out.push_back(c);
  }
  return out;
}

// One result line of implementation `impl`; flops and bytes are per call (0:
// not reported); `extra` is appended as it is (", \"key\": value" pairs).
void EmitImpl(const char* impl, const std::string& kernel, const std::string& shape, const char* dtype, double ms,
              double flops, double bytes, int reps, const std::string& extra) {
  std::printf("{\"impl\": \"%s\", \"kernel\": \"%s\", \"shape\": \"%s\", \"dtype\": \"%s\", \"ms\": %.4f", impl,
              JsonEscape(kernel).c_str(), JsonEscape(shape).c_str(), dtype, ms);
  if (flops > 0) std::printf(", \"tflops\": %.1f", flops / (ms * 1e-3) / 1e12);
  if (bytes > 0) std::printf(", \"gbps\": %.1f", bytes / (ms * 1e-3) / 1e9);
  std::printf("%s, \"reps\": %d}\n", extra.c_str(), reps);
  std::fflush(stdout);
}

void Emit(const std::string& kernel, const std::string& shape, const char* dtype, double ms, double flops, double bytes,
          int reps) {
  EmitImpl("ours", kernel, shape, dtype, ms, flops, bytes, reps, "");
}

// Median milliseconds of `reps` back-to-back calls of fn on `stream`, each
// bracketed by CUDA events, after `warmup` untimed calls.
double MedianMs(const std::function<void()>& fn, const Options& opt, cudaStream_t stream) {
  for (int i = 0; i < opt.warmup; ++i) fn();
  CUDA_CHECK(cudaGetLastError());
  std::vector<cudaEvent_t> events(static_cast<size_t>(opt.reps) + 1);
  for (cudaEvent_t& e : events) CUDA_CHECK(cudaEventCreate(&e));
  CUDA_CHECK(cudaEventRecord(events.at(0), stream));
  for (int i = 0; i < opt.reps; ++i) {
    fn();
    CUDA_CHECK(cudaEventRecord(events[static_cast<size_t>(i) + 1], stream));
  }
  CUDA_CHECK(cudaEventSynchronize(events.back()));
  CUDA_CHECK(cudaGetLastError());
  std::vector<float> ms(static_cast<size_t>(opt.reps));
  for (size_t i = 0; i < ms.size(); ++i) CUDA_CHECK(cudaEventElapsedTime(&ms[i], events[i], events[i + 1]));
  for (cudaEvent_t& e : events) CUDA_CHECK(cudaEventDestroy(e));
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  return n % 2 == 1 ? ms[n / 2] : 0.5 * (static_cast<double>(ms[n / 2 - 1]) + ms[n / 2]);
}

// A device tensor that owns its memory.
struct DeviceTensor {
  Arena arena;
  Tensor t;
  DeviceTensor(DType dtype, Shape shape)
      : arena(latam::Device::kCUDA, std::max<size_t>(static_cast<size_t>(shape.numel()) * latam::DTypeSize(dtype), 1)),
        t(arena.View(0, dtype, shape)) {}
};

// Standard normal values, generated once; every fill reads them from its own
// starting point, so different tensors hold different data.
const std::vector<float>& NormalPattern() {
  static const std::vector<float> pattern = [] {
    std::vector<float> v((size_t{1} << 20) + 7);
    std::mt19937 rng(1234);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (float& x : v) x = dist(rng);
    return v;
  }();
  return pattern;
}

// Fills a bf16 or f32 device tensor with scale * N(0, 1) (|.| when
// `positive`): one host chunk is uploaded, then copied over the rest on the
// device, doubling the filled prefix each time.
void FillRandom(const Tensor& t, float scale, bool positive, uint64_t seed, cudaStream_t stream) {
  const std::vector<float>& pattern = NormalPattern();
  const size_t n = static_cast<size_t>(t.numel()), es = latam::DTypeSize(t.dtype);
  const size_t chunk = std::min(n, size_t{1} << 22);
  const size_t start = static_cast<size_t>(seed * 104729u) % pattern.size();
  std::vector<unsigned char> host(chunk * es);
  for (size_t i = 0; i < chunk; ++i) {
    float v = scale * pattern[(start + i) % pattern.size()];
    if (positive) v = std::fabs(v);
    if (t.dtype == DType::kBF16) {
      const latam::BF16 b = latam::BF16::FromFloat(v);
      std::memcpy(&host[i * es], &b, es);
    } else {
      LATAM_CHECK(t.dtype == DType::kF32, "FillRandom takes bf16 or f32, not " << latam::DTypeName(t.dtype));
      std::memcpy(&host[i * es], &v, es);
    }
  }
  auto* base = static_cast<unsigned char*>(t.data);
  CUDA_CHECK(cudaMemcpyAsync(base, host.data(), chunk * es, cudaMemcpyHostToDevice, stream));
  for (size_t done = chunk; done < n;) {
    const size_t count = std::min(done, n - done);
    CUDA_CHECK(cudaMemcpyAsync(base + done * es, base, count * es, cudaMemcpyDeviceToDevice, stream));
    done += count;
  }
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

std::string Str(int64_t v) { return std::to_string(v); }

// ---------------------------------------------------------------------------
// GEMMs: y = x W^T, dx = dy W, dW(f32) += dy^T x for each linear layer of one
// transformer block and the LM head.
void BenchGemms(const Options& opt, cudaStream_t stream) {
  latam::cuda::GemmContext ctx;
  for (const ModelShape& m : opt.models) {
    struct Linear {
      const char* name;
      int64_t in, out;
    };
    const int64_t hd = m.head_dim();
    const std::vector<Linear> linears = {{"qkv", m.dim, (m.heads + 2 * m.kv_heads) * hd},
                                         {"o", m.heads * hd, m.dim},
                                         {"gate_up", m.dim, 2 * m.ffn},
                                         {"down", m.ffn, m.dim},
                                         {"lm_head", m.dim, m.vocab}};
    for (const Linear& l : linears) {
      const std::string shape =
          std::string(m.name) + " " + l.name + " T=" + Str(opt.gemm_tokens) + " in=" + Str(l.in) + " out=" + Str(l.out);
      const bool fwd = Wanted(opt, "gemm_fwd", shape), bin = Wanted(opt, "gemm_bwd_input", shape),
                 bw = Wanted(opt, "gemm_bwd_weight", shape);
      if (!fwd && !bin && !bw) continue;
      const int64_t t = opt.gemm_tokens;
      DeviceTensor x(DType::kBF16, {t, l.in}), w(DType::kBF16, {l.out, l.in}), y(DType::kBF16, {t, l.out});
      DeviceTensor dx(DType::kBF16, {t, l.in}), dw(DType::kF32, {l.out, l.in});
      FillRandom(x.t, 1.0f, false, 1, stream);
      FillRandom(w.t, 0.02f, false, 2, stream);
      FillRandom(y.t, 1.0f, false, 3, stream);
      const double flops = 2.0 * static_cast<double>(t) * static_cast<double>(l.in) * static_cast<double>(l.out);
      if (fwd) {
        const double ms = MedianMs([&] { latam::cuda::LinearForward(ctx, x.t, w.t, y.t, false, stream); }, opt, stream);
        Emit("gemm_fwd", shape, "bf16", ms, flops, 0, opt.reps);
      }
      if (bin) {
        const double ms =
            MedianMs([&] { latam::cuda::LinearBackwardInput(ctx, y.t, w.t, dx.t, false, stream); }, opt, stream);
        Emit("gemm_bwd_input", shape, "bf16", ms, flops, 0, opt.reps);
      }
      if (bw) {
        const double ms =
            MedianMs([&] { latam::cuda::LinearBackwardWeight(ctx, y.t, x.t, dw.t, stream); }, opt, stream);
        Emit("gemm_bwd_weight", shape, "bf16->f32", ms, flops, 0, opt.reps);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Runs a reference forward (`reference(out, lse)`: the simple causal kernel,
// or the mma.sync flash kernel) on the same qkv into buffers of its own and
// returns JSON fields comparing its out and lse with the measured kernel's
// (`out`, `lse`): the largest absolute differences, the largest |out| of the
// reference for scale, and "agrees_with_<name>", true within loose bounds
// (out: 3e-2 of that scale, as the flash kernel's test; lse: 1e-3 + 1e-3
// |lse| per element; no NaN or infinity, whose count is
// "nonfinite_vs_<name>"); false is also said on stderr.
std::string CompareForwards(const std::string& name, const std::function<void(const Tensor&, const Tensor&)>& reference,
                            const Tensor& out, const Tensor& lse, const std::string& shape, cudaStream_t stream) {
  DeviceTensor ref_out(DType::kBF16, out.shape), ref_lse(DType::kF32, lse.shape);
  reference(ref_out.t, ref_lse.t);
  CUDA_CHECK(cudaStreamSynchronize(stream));
  const size_t n_out = static_cast<size_t>(out.numel()), n_lse = static_cast<size_t>(lse.numel());
  std::vector<latam::BF16> got(n_out), want(n_out);
  std::vector<float> got_lse(n_lse), want_lse(n_lse);
  CUDA_CHECK(cudaMemcpy(got.data(), out.data, n_out * sizeof(latam::BF16), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(want.data(), ref_out.t.data, n_out * sizeof(latam::BF16), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(got_lse.data(), lse.data, n_lse * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(want_lse.data(), ref_lse.t.data, n_lse * sizeof(float), cudaMemcpyDeviceToHost));
  // Differences over the pairs where both are finite; the others are counted.
  double out_diff = 0, out_scale = 0, lse_diff = 0;
  int64_t nonfinite = 0;
  bool agrees = true;
  for (size_t i = 0; i < n_out; ++i) {
    const double g = got[i].ToFloat(), w = want[i].ToFloat();
    if (!std::isfinite(g) || !std::isfinite(w)) {
      ++nonfinite;
      continue;
    }
    out_diff = std::max(out_diff, std::fabs(g - w));
    out_scale = std::max(out_scale, std::fabs(w));
  }
  for (size_t i = 0; i < n_lse; ++i) {
    const double g = got_lse[i], w = want_lse[i];
    if (!std::isfinite(g) || !std::isfinite(w)) {
      ++nonfinite;
      continue;
    }
    lse_diff = std::max(lse_diff, std::fabs(g - w));
    if (std::fabs(g - w) > 1e-3 + 1e-3 * std::fabs(w)) agrees = false;
  }
  if (nonfinite > 0 || out_diff > 3e-2 * out_scale) agrees = false;
  if (!agrees) {
    std::fprintf(stderr,
                 "bench_cuda_kernels: WARNING: the attention forward differs from the %s kernel's on %s: "
                 "max|d out| %.3g (max|out| %.3g), max|d lse| %.3g, %lld non-finite\n",
                 name.c_str(), shape.c_str(), out_diff, out_scale, lse_diff, static_cast<long long>(nonfinite));
  }
  char buf[320];
  std::snprintf(buf, sizeof(buf),
                ", \"out_max_abs_diff_vs_%s\": %.3g, \"out_max_abs_%s\": %.3g, "
                "\"lse_max_abs_diff_vs_%s\": %.3g, \"nonfinite_vs_%s\": %lld, \"agrees_with_%s\": %s",
                name.c_str(), out_diff, name.c_str(), out_scale, name.c_str(), lse_diff, name.c_str(),
                static_cast<long long>(nonfinite), name.c_str(), agrees ? "true" : "false");
  return buf;
}

// Compares the gradients in `dqkv` (from the wgmma backward) with those of
// `reference` (the mma.sync backward, writing into dqkv too, so the measured
// result is copied aside first): JSON fields with the largest absolute
// difference, the largest |reference| for scale, and "agrees_with_mma"
// (within 3e-2 of that scale, nothing non-finite); false is also said on
// stderr.
std::string CompareBackwards(const Tensor& dqkv, const std::string& shape, const std::function<void()>& reference,
                             cudaStream_t stream) {
  const size_t n = static_cast<size_t>(dqkv.numel());
  std::vector<latam::BF16> got(n), want(n);
  CUDA_CHECK(cudaStreamSynchronize(stream));
  CUDA_CHECK(cudaMemcpy(got.data(), dqkv.data, n * sizeof(latam::BF16), cudaMemcpyDeviceToHost));
  reference();
  CUDA_CHECK(cudaStreamSynchronize(stream));
  CUDA_CHECK(cudaMemcpy(want.data(), dqkv.data, n * sizeof(latam::BF16), cudaMemcpyDeviceToHost));
  double diff = 0, scale = 0;
  int64_t nonfinite = 0;
  for (size_t i = 0; i < n; ++i) {
    const double g = got[i].ToFloat(), w = want[i].ToFloat();
    if (!std::isfinite(g) || !std::isfinite(w)) {
      ++nonfinite;
      continue;
    }
    diff = std::max(diff, std::fabs(g - w));
    scale = std::max(scale, std::fabs(w));
  }
  const bool agrees = nonfinite == 0 && diff <= 3e-2 * scale;
  if (!agrees) {
    std::fprintf(stderr,
                 "bench_cuda_kernels: WARNING: the wgmma attention backward differs from the mma.sync one on %s: "
                 "max|d dqkv| %.3g (max|dqkv| %.3g), %lld non-finite\n",
                 shape.c_str(), diff, scale, static_cast<long long>(nonfinite));
  }
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                ", \"dqkv_max_abs_diff_vs_mma\": %.3g, \"dqkv_max_abs_mma\": %.3g, \"nonfinite_vs_mma\": %lld, "
                "\"agrees_with_mma\": %s",
                diff, scale, static_cast<long long>(nonfinite), agrees ? "true" : "false");
  return buf;
}

// Attention, bf16, B * T = 16k tokens, H * d = 2048, T from 512 to 16k, head
// dims 64 and 128, causal ("causal" in the shape) and not ("full"), plus
// grouped-query shapes (4 query heads per KV head, as llama3).
//   - The tensor-core kernel (impl "ours", variant "latam-flash") on every
//     shape: attention_fwd, attention_bwd (given the forward's out and lse)
//     and attention_fwd_bwd (one forward then one backward per call).
//   - The simple kernel (impl "ours-simple", variant "latam-simple"), which
//     is causal only: attention_fwd and attention_bwd on the causal shapes.
//   - On a compute capability 9.0 GPU, the Hopper kernels (impl
//     "ours-wgmma" and "ours-wgmma-tma", variants "latam-flash-wgmma" and
//     "latam-flash-wgmma-tma"): attention_fwd for each forward,
//     attention_bwd for the wgmma backward (under "ours-wgmma"), and
//     attention_fwd_bwd for each forward followed by the wgmma backward;
//     their attention_fwd and attention_bwd rows say how far their results
//     are from the mma.sync kernels' ("agrees_with_mma").
// FLOPs as in the FlashAttention papers: forward 4 B T^2 H d, halved when
// causal; backward 2.5x the forward; forward + backward 3.5x.
// On causal shapes the flash forward row also reports how far its out and
// lse are from the simple kernel's on the same inputs (max |difference|, and
// max |out| of the simple kernel for scale), with "agrees_with_simple"
// (CompareForwards).
void BenchAttention(const Options& opt, cudaStream_t stream) {
  namespace lc = latam::cuda;
  struct Case {
    int64_t seq, head_dim, kv_heads;  // kv_heads 0: as many as query heads
    bool causal;
  };
  std::vector<Case> cases;
  for (const bool causal : {true, false}) {
    for (const int64_t hd : opt.head_dims) {
      for (const int64_t t : opt.seqs) cases.push_back({t, hd, 0, causal});
    }
  }
  // Grouped-query attention, 4 query heads per KV head (llama3).
  for (const bool causal : {true, false}) {
    for (const int64_t hd : opt.head_dims) {
      for (const int64_t t : opt.gqa_seqs) {
        if (opt.attention_width / hd / 4 >= 1) cases.push_back({t, hd, opt.attention_width / hd / 4, causal});
      }
    }
  }
  const std::string flash_variant = ", \"variant\": \"latam-flash\"";
  const std::string simple_variant = ", \"variant\": \"latam-simple\"";
  const bool wgmma = lc::FlashWgmmaForwardAvailable();
  if (!wgmma) std::fprintf(stderr, "bench_cuda_kernels: not a compute capability 9.0 GPU: no wgmma forward rows\n");
  for (const Case& c : cases) {
    const int64_t b = std::max<int64_t>(1, opt.attention_tokens / c.seq), h = opt.attention_width / c.head_dim;
    const int64_t hkv = c.kv_heads == 0 ? h : c.kv_heads;
    const std::string shape = "B=" + Str(b) + " T=" + Str(c.seq) + " H=" + Str(h) + " Hkv=" + Str(hkv) +
                              " d=" + Str(c.head_dim) + (c.causal ? " causal" : " full");
    const bool want_fwd = Wanted(opt, "attention_fwd", shape), want_bwd = Wanted(opt, "attention_bwd", shape),
               want_fwd_bwd = Wanted(opt, "attention_fwd_bwd", shape);
    if (!want_fwd && !want_bwd && !want_fwd_bwd) continue;
    const lc::AttentionDims dims{static_cast<int>(b), static_cast<int>(c.seq), static_cast<int>(h),
                                 static_cast<int>(hkv), static_cast<int>(c.head_dim)};
    const bool flash = lc::FlashAttentionSupports(dims, DType::kBF16);
    const bool simple = c.causal;  // the simple kernel has no non-causal mode
    if (!flash) std::fprintf(stderr, "bench_cuda_kernels: flash attention does not take %s, skipped\n", shape.c_str());
    if (!flash && !simple) continue;
    const int64_t rows = b * c.seq, width = (h + 2 * hkv) * c.head_dim;
    DeviceTensor qkv(DType::kBF16, {rows, width}), out(DType::kBF16, {rows, h * c.head_dim});
    DeviceTensor dout(DType::kBF16, {rows, h * c.head_dim}), dqkv(DType::kBF16, {rows, width});
    DeviceTensor lse(DType::kF32, {b, h, c.seq});
    DeviceTensor ws(DType::kF32, {std::max(lc::AttentionBackwardWorkspaceElems(dims),
                                           lc::FlashAttentionBackwardWorkspaceElems(dims))});
    FillRandom(qkv.t, 1.0f, false, 11, stream);
    FillRandom(dout.t, 1.0f, false, 12, stream);
    const double fwd_flops = 4.0 * static_cast<double>(b) * static_cast<double>(c.seq) * static_cast<double>(c.seq) *
                             static_cast<double>(h) * static_cast<double>(c.head_dim) / (c.causal ? 2.0 : 1.0);
    auto simple_forward = [&] { lc::AttentionForward(qkv.t, dims, out.t, lse.t, stream); };
    auto simple_backward = [&] { lc::AttentionBackward(qkv.t, out.t, dout.t, lse.t, dims, dqkv.t, ws.t, stream); };
    auto flash_forward = [&] { lc::FlashAttentionForward(qkv.t, dims, c.causal, out.t, lse.t, stream); };
    auto flash_backward = [&] {
      lc::FlashAttentionBackward(qkv.t, out.t, dout.t, lse.t, dims, c.causal, dqkv.t, ws.t, stream);
    };
    auto wgmma_forward = [&](lc::FlashForwardPath path) {
      lc::FlashAttentionForward(qkv.t, dims, c.causal, out.t, lse.t, stream, path);
    };
    auto wgmma_backward = [&] {
      lc::FlashAttentionBackward(qkv.t, out.t, dout.t, lse.t, dims, c.causal, dqkv.t, ws.t, stream,
                                 lc::FlashBackwardPath::kWgmma);
    };
    if (flash) {
      if (want_fwd) {
        const double ms = MedianMs(flash_forward, opt, stream);
        std::string extra = flash_variant;
        if (simple) {
          extra += CompareForwards(
              "simple", [&](const Tensor& o, const Tensor& l) { lc::AttentionForward(qkv.t, dims, o, l, stream); },
              out.t, lse.t, shape, stream);
        }
        EmitImpl("ours", "attention_fwd", shape, "bf16", ms, fwd_flops, 0, opt.reps, extra);
      }
      if (want_bwd) {
        flash_forward();
        EmitImpl("ours", "attention_bwd", shape, "bf16", MedianMs(flash_backward, opt, stream), 2.5 * fwd_flops, 0,
                 opt.reps, flash_variant);
      }
      if (want_fwd_bwd) {
        const double ms = MedianMs(
            [&] {
              flash_forward();
              flash_backward();
            },
            opt, stream);
        EmitImpl("ours", "attention_fwd_bwd", shape, "bf16", ms, 3.5 * fwd_flops, 0, opt.reps, flash_variant);
      }
    }
    const std::pair<lc::FlashForwardPath, std::string> wgmma_paths[] = {
        {lc::FlashForwardPath::kWgmma, "wgmma"}, {lc::FlashForwardPath::kWgmmaTma, "wgmma-tma"}};
    for (const auto& [path, name] : wgmma_paths) {
      if (!flash || !wgmma) break;
      const std::string impl = "ours-" + name, variant = ", \"variant\": \"latam-flash-" + name + "\"";
      if (want_fwd) {
        const double ms = MedianMs([&] { wgmma_forward(path); }, opt, stream);
        const std::string extra =
            variant + CompareForwards(
                          "mma",
                          [&](const Tensor& o, const Tensor& l) {
                            lc::FlashAttentionForward(qkv.t, dims, c.causal, o, l, stream);
                          },
                          out.t, lse.t, shape, stream);
        EmitImpl(impl.c_str(), "attention_fwd", shape, "bf16", ms, fwd_flops, 0, opt.reps, extra);
      }
      if (want_bwd && path == lc::FlashForwardPath::kWgmma) {  // one backward row: it does not depend on the forward
        flash_forward();
        const double ms = MedianMs(wgmma_backward, opt, stream);
        EmitImpl(impl.c_str(), "attention_bwd", shape, "bf16", ms, 2.5 * fwd_flops, 0, opt.reps,
                 variant + CompareBackwards(dqkv.t, shape, flash_backward, stream));
      }
      if (want_fwd_bwd) {
        const double ms = MedianMs(
            [&] {
              wgmma_forward(path);
              wgmma_backward();
            },
            opt, stream);
        EmitImpl(impl.c_str(), "attention_fwd_bwd", shape, "bf16", ms, 3.5 * fwd_flops, 0, opt.reps, variant);
      }
    }
    if (simple) {
      if (want_fwd) {
        EmitImpl("ours-simple", "attention_fwd", shape, "bf16", MedianMs(simple_forward, opt, stream), fwd_flops, 0,
                 opt.reps, simple_variant);
      }
      if (want_bwd) {
        simple_forward();
        EmitImpl("ours-simple", "attention_bwd", shape, "bf16", MedianMs(simple_backward, opt, stream), 2.5 * fwd_flops,
                 0, opt.reps, simple_variant);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Memory-bound kernels of one block: RMSNorm, residual add + RMSNorm, SwiGLU,
// RoPE, each forward and backward, on opt.rows rows of bf16.
void BenchNorms(const Options& opt, cudaStream_t stream) {
  for (const ModelShape& m : opt.models) {
    const int64_t d = m.dim, rows = opt.rows;
    const std::string shape = std::string(m.name) + " M=" + Str(rows) + " D=" + Str(d);
    const double act = static_cast<double>(rows * d) * 2.0;                               // one bf16 [M, D]
    const double stats = static_cast<double>(rows) * 4.0 + static_cast<double>(d) * 2.0;  // rstd + w
    const double dw_bytes = static_cast<double>(d) * 8.0;                                 // f32 dw read + written
    if (Wanted(opt, "rmsnorm_fwd", shape) || Wanted(opt, "rmsnorm_bwd", shape)) {
      DeviceTensor x(DType::kBF16, {rows, d}), w(DType::kBF16, {d}), y(DType::kBF16, {rows, d});
      DeviceTensor rstd(DType::kF32, {rows}), dx(DType::kBF16, {rows, d}), dw(DType::kF32, {d});
      DeviceTensor ws(DType::kF32, {latam::cuda::RmsNormBackwardWorkspaceElems(rows, d)});
      FillRandom(x.t, 1.0f, false, 21, stream);
      FillRandom(w.t, 1.0f, false, 22, stream);
      auto forward = [&] { latam::cuda::RmsNormForward(x.t, w.t, 1e-5f, y.t, rstd.t, stream); };
      if (Wanted(opt, "rmsnorm_fwd", shape)) {
        Emit("rmsnorm_fwd", shape, "bf16", MedianMs(forward, opt, stream), 0, 2 * act + stats, opt.reps);
      }
      if (Wanted(opt, "rmsnorm_bwd", shape)) {
        forward();
        FillRandom(y.t, 1.0f, false, 23, stream);  // dy
        const double ms = MedianMs(
            [&] { latam::cuda::RmsNormBackward(y.t, x.t, w.t, rstd.t, dx.t, false, dw.t, ws.t, stream); }, opt, stream);
        Emit("rmsnorm_bwd", shape, "bf16", ms, 0, 3 * act + stats + dw_bytes, opt.reps);
      }
    }
    if (Wanted(opt, "add_rmsnorm_fwd", shape) || Wanted(opt, "add_rmsnorm_bwd", shape)) {
      DeviceTensor x(DType::kBF16, {rows, d}), r(DType::kBF16, {rows, d}), h(DType::kBF16, {rows, d});
      DeviceTensor y(DType::kBF16, {rows, d}), w(DType::kBF16, {d}), rstd(DType::kF32, {rows});
      DeviceTensor dh(DType::kBF16, {rows, d}), dw(DType::kF32, {d});
      DeviceTensor ws(DType::kF32, {latam::cuda::AddRmsNormBackwardWorkspaceElems(rows, d)});
      FillRandom(x.t, 1.0f, false, 31, stream);
      FillRandom(r.t, 1.0f, false, 32, stream);
      FillRandom(w.t, 1.0f, false, 33, stream);
      auto forward = [&] { latam::cuda::AddRmsNormForward(x.t, r.t, w.t, 1e-5f, h.t, y.t, rstd.t, stream); };
      if (Wanted(opt, "add_rmsnorm_fwd", shape)) {
        Emit("add_rmsnorm_fwd", shape, "bf16", MedianMs(forward, opt, stream), 0, 4 * act + stats, opt.reps);
      }
      if (Wanted(opt, "add_rmsnorm_bwd", shape)) {
        forward();
        // dy in y, the residual-path gradient in x (both only read).
        FillRandom(y.t, 1.0f, false, 34, stream);
        const double ms =
            MedianMs([&] { latam::cuda::AddRmsNormBackward(y.t, h.t, w.t, rstd.t, x.t, dh.t, dw.t, ws.t, stream); },
                     opt, stream);
        Emit("add_rmsnorm_bwd", shape, "bf16", ms, 0, 4 * act + stats + dw_bytes, opt.reps);
      }
    }
  }
}

void BenchSwiglu(const Options& opt, cudaStream_t stream) {
  for (const ModelShape& m : opt.models) {
    const int64_t f = m.ffn, rows = opt.rows;
    const std::string shape = std::string(m.name) + " M=" + Str(rows) + " F=" + Str(f);
    const bool want_fwd = Wanted(opt, "swiglu_fwd", shape), want_bwd = Wanted(opt, "swiglu_bwd", shape);
    if (!want_fwd && !want_bwd) continue;
    DeviceTensor gu(DType::kBF16, {rows, 2 * f}), out(DType::kBF16, {rows, f}), dgu(DType::kBF16, {rows, 2 * f});
    FillRandom(gu.t, 2.0f, false, 41, stream);
    FillRandom(out.t, 1.0f, false, 42, stream);
    const double act = static_cast<double>(rows * f) * 2.0;  // one bf16 [M, F]
    if (want_fwd) {
      const double ms = MedianMs([&] { latam::cuda::SwigluForward(gu.t, out.t, stream); }, opt, stream);
      Emit("swiglu_fwd", shape, "bf16", ms, 0, 3 * act, opt.reps);
    }
    if (want_bwd) {
      FillRandom(out.t, 1.0f, false, 43, stream);  // dout
      const double ms = MedianMs([&] { latam::cuda::SwigluBackward(out.t, gu.t, dgu.t, stream); }, opt, stream);
      Emit("swiglu_bwd", shape, "bf16", ms, 0, 5 * act, opt.reps);
    }
  }
}

void BenchRope(const Options& opt, cudaStream_t stream) {
  const int64_t seq = std::min<int64_t>(8192, opt.rows);
  for (const ModelShape& m : opt.models) {
    const int64_t hd = m.head_dim(), rows = opt.rows, rot = m.heads + m.kv_heads;
    const std::string shape = std::string(m.name) + " M=" + Str(rows) + " T=" + Str(seq) + " H=" + Str(m.heads) +
                              " Hkv=" + Str(m.kv_heads) + " d=" + Str(hd);
    const bool want_fwd = Wanted(opt, "rope_fwd", shape), want_bwd = Wanted(opt, "rope_bwd", shape);
    if (!want_fwd && !want_bwd) continue;
    latam::RopeScaling scaling;
    scaling.factor = 32.0;
    const latam::RopeTable table =
        latam::BuildRopeTable(500000.0, static_cast<int>(hd), static_cast<int>(seq), scaling);
    Arena table_arena(latam::Device::kCUDA, latam::cuda::RopeTableBytes(table));
    const latam::cuda::RopeDeviceTable dtable = latam::cuda::UploadRopeTable(table, table_arena, 0, stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    DeviceTensor qkv(DType::kBF16, {rows, (m.heads + 2 * m.kv_heads) * hd});
    FillRandom(qkv.t, 1.0f, false, 51, stream);
    // In place over the Q and K heads: each element read and written once.
    const double bytes = 2.0 * static_cast<double>(rows * rot * hd) * 2.0;
    if (want_fwd) {
      const double ms = MedianMs(
          [&] { latam::cuda::RopeForward(qkv.t, static_cast<int>(seq), static_cast<int>(rot), dtable, stream); }, opt,
          stream);
      Emit("rope_fwd", shape, "bf16", ms, 0, bytes, opt.reps);
    }
    if (want_bwd) {
      const double ms = MedianMs(
          [&] { latam::cuda::RopeBackward(qkv.t, static_cast<int>(seq), static_cast<int>(rot), dtable, stream); }, opt,
          stream);
      Emit("rope_bwd", shape, "bf16", ms, 0, bytes, opt.reps);
    }
  }
}

// The three vocab-parallel cross-entropy phases of one rank holding the whole
// vocabulary, over opt.loss_rows rows of bf16 logits.
void BenchCrossEntropy(const Options& opt, cudaStream_t stream) {
  const int64_t rows = opt.loss_rows, vocab = opt.models.front().vocab;
  const std::string shape = "M=" + Str(rows) + " V=" + Str(vocab);
  const bool want_max = Wanted(opt, "xent_rowmax", shape), want_sum = Wanted(opt, "xent_sumexp", shape),
             want_bwd = Wanted(opt, "xent_bwd", shape);
  if (!want_max && !want_sum && !want_bwd) return;
  DeviceTensor logits(DType::kBF16, {rows, vocab}), targets(DType::kI32, {rows});
  DeviceTensor row_max(DType::kF32, {rows}), sumexp(DType::kF32, {rows}), tlogit(DType::kF32, {rows});
  DeviceTensor lse(DType::kF32, {rows}), error(DType::kI32, {1});
  FillRandom(logits.t, 3.0f, false, 61, stream);
  std::vector<int32_t> host_targets(static_cast<size_t>(rows));
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
  for (int32_t& t : host_targets) t = pick(rng);
  CUDA_CHECK(
      cudaMemcpy(targets.t.data, host_targets.data(), host_targets.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  const double logit_bytes = static_cast<double>(rows * vocab) * 2.0;
  const double row_bytes = static_cast<double>(rows) * 4.0;
  auto row_max_fn = [&] { latam::cuda::LogitsRowMax(logits.t, row_max.t, stream); };
  auto sumexp_fn = [&] {
    latam::cuda::LogitsRowSumExp(logits.t, row_max.t, targets.t, 0, vocab, sumexp.t, tlogit.t, error.t, stream);
  };
  if (want_max)
    Emit("xent_rowmax", shape, "bf16", MedianMs(row_max_fn, opt, stream), 0, logit_bytes + row_bytes, opt.reps);
  row_max_fn();
  if (want_sum) {
    Emit("xent_sumexp", shape, "bf16", MedianMs(sumexp_fn, opt, stream), 0, logit_bytes + 4 * row_bytes, opt.reps);
  }
  if (want_bwd) {
    sumexp_fn();
    CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<float> host_max(static_cast<size_t>(rows)), host_sum(static_cast<size_t>(rows));
    CUDA_CHECK(cudaMemcpy(host_max.data(), row_max.t.data, host_max.size() * 4, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(host_sum.data(), sumexp.t.data, host_sum.size() * 4, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < host_max.size(); ++i) host_max[i] += std::log(host_sum[i]);
    CUDA_CHECK(cudaMemcpy(lse.t.data, host_max.data(), host_max.size() * 4, cudaMemcpyHostToDevice));
    // In place: every repetition turns the previous gradient into the next
    // (same work, finite values).
    const double ms =
        MedianMs([&] { latam::cuda::SoftmaxCrossEntropyBackward(logits.t, targets.t, 0, lse.t, 1.0f / rows, stream); },
                 opt, stream);
    Emit("xent_bwd", shape, "bf16", ms, 0, 2 * logit_bytes + 2 * row_bytes, opt.reps);
  }
}

// Multi-tensor AdamW (with the bf16 weight copy) and the gradient sum of
// squares over the parameter tensors of the first model (llama3-1b: 1.24B
// parameters, tied embedding), one segment per tensor.
void BenchOptimizer(const Options& opt, cudaStream_t stream) {
  const ModelShape& m = opt.models.front();
  const int64_t hd = m.head_dim();
  std::vector<std::pair<int64_t, bool>> tensors;  // numel, weight decay
  tensors.emplace_back(m.vocab * m.dim, true);
  for (int layer = 0; layer < m.layers; ++layer) {
    tensors.emplace_back(m.dim, false);
    tensors.emplace_back((m.heads + 2 * m.kv_heads) * hd * m.dim, true);
    tensors.emplace_back(m.heads * hd * m.dim, true);
    tensors.emplace_back(m.dim, false);
    tensors.emplace_back(2 * m.ffn * m.dim, true);
    tensors.emplace_back(m.ffn * m.dim, true);
  }
  tensors.emplace_back(m.dim, false);
  int64_t total = 0;
  for (const auto& t : tensors) total += t.first;
  const std::string shape =
      std::string(m.name) + " params=" + Str(total) + " tensors=" + Str(static_cast<int64_t>(tensors.size()));
  const bool want_adamw = Wanted(opt, "adamw", shape), want_norm = Wanted(opt, "grad_sumsq", shape);
  if (!want_adamw && !want_norm) return;
  DeviceTensor param(DType::kF32, {total}), grad(DType::kF32, {total}), m1(DType::kF32, {total});
  DeviceTensor m2(DType::kF32, {total}), bf16(DType::kBF16, {total});
  FillRandom(param.t, 0.02f, false, 71, stream);
  FillRandom(grad.t, 1e-3f, false, 72, stream);
  FillRandom(m1.t, 1e-3f, false, 73, stream);
  FillRandom(m2.t, 1e-6f, true, 74, stream);
  std::vector<latam::cuda::OptimizerSegment> segments;
  int64_t offset = 0;
  for (const auto& t : tensors) {
    latam::cuda::OptimizerSegment s{};
    s.param = param.t.as<float>() + offset;
    s.grad = grad.t.as<float>() + offset;
    s.exp_avg = m1.t.as<float>() + offset;
    s.exp_avg_sq = m2.t.as<float>() + offset;
    s.param_bf16 = bf16.t.as<latam::BF16>() + offset;
    s.numel = t.first;
    s.weight_decay = t.second ? 1 : 0;
    s.counted = 1;
    segments.push_back(s);
    offset += t.first;
  }
  Arena table(latam::Device::kCUDA, segments.size() * sizeof(latam::cuda::OptimizerSegment));
  CUDA_CHECK(cudaMemcpy(table.data(), segments.data(), table.size(), cudaMemcpyHostToDevice));
  const auto* dev_segments = static_cast<const latam::cuda::OptimizerSegment*>(table.data());
  const int n_segments = static_cast<int>(segments.size());
  if (want_adamw) {
    latam::AdamWHyper hyper;
    hyper.lr = 3e-4f;
    hyper.weight_decay = 0.1f;
    hyper.step = 10;
    const double ms =
        MedianMs([&] { latam::cuda::MultiTensorAdamW(dev_segments, n_segments, hyper, 0.5f, stream); }, opt, stream);
    // Reads param, grad, m, v; writes param, m, v and the bf16 copy.
    Emit("adamw", shape, "f32+bf16", ms, 0, static_cast<double>(total) * 30.0, opt.reps);
  }
  if (want_norm) {
    Arena scratch(latam::Device::kCUDA,
                  static_cast<size_t>(latam::cuda::GradSumOfSquaresWorkspaceElems() + 1) * sizeof(double));
    auto* ws = static_cast<double*>(scratch.data());
    double* sum = ws + latam::cuda::GradSumOfSquaresWorkspaceElems();
    const double ms =
        MedianMs([&] { latam::cuda::GradSumOfSquares(dev_segments, n_segments, ws, sum, stream); }, opt, stream);
    Emit("grad_sumsq", shape, "f32", ms, 0, static_cast<double>(total) * 4.0, opt.reps);
  }
}

void Usage() {
  std::fprintf(stderr,
               "usage: bench_cuda_kernels [--quick | --tiny] [--seqs T,T,...] [--filter SUBSTRING] [--reps N] "
               "[--warmup N]\n"
               "  prints one JSON line per (kernel, shape): median ms and TFLOP/s or GB/s\n"
               "  --quick: llama3-1b shapes, attention T 2k and 8k at d 128; --tiny: toy shapes (emulation)\n"
               "  --seqs: the attention sequence lengths\n"
               "  --filter S keeps the rows whose \"kernel shape\" contains S (repeatable: all of them)\n");
}

// "2048,8192" -> {2048, 8192}; false unless every item is a positive integer.
bool ParseSeqs(const std::string& list, std::vector<int64_t>* out) {
  out->clear();
  size_t start = 0;
  while (start <= list.size()) {
    const size_t end = std::min(list.find(',', start), list.size());
    const std::string item = list.substr(start, end - start);
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos || item.size() > 9) return false;
    out->push_back(std::stoll(item));
    if (out->back() <= 0) return false;
    start = end + 1;
  }
  return !out->empty();
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  bool reps_set = false, warmup_set = false;
  std::vector<int64_t> seqs;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--quick") {
      opt.quick = true;
    } else if (arg == "--tiny") {
      opt.tiny = true;
    } else if (arg == "--seqs" && has_value) {
      if (!ParseSeqs(argv[++i], &seqs)) {
        std::fprintf(stderr, "bench_cuda_kernels: --seqs takes positive integers separated by commas, not %s\n",
                     argv[i]);
        return 2;
      }
    } else if (arg == "--filter" && has_value) {
      opt.filters.emplace_back(argv[++i]);
    } else if (arg == "--reps" && has_value) {
      opt.reps = std::max(1, std::atoi(argv[++i]));
      reps_set = true;
    } else if (arg == "--warmup" && has_value) {
      opt.warmup = std::max(0, std::atoi(argv[++i]));
      warmup_set = true;
    } else if (arg == "--help" || arg == "-h") {
      Usage();
      return 0;
    } else {
      std::fprintf(stderr, "bench_cuda_kernels: unknown or incomplete option %s\n", arg.c_str());
      Usage();
      return 2;
    }
  }
  if (opt.quick && opt.tiny) {
    std::fprintf(stderr, "bench_cuda_kernels: --quick and --tiny exclude each other\n");
    return 2;
  }
  if (opt.quick) {
    opt.models = {kLlama1B};
    opt.seqs = {2048, 8192};
    opt.gqa_seqs = {};
    opt.head_dims = {128};
    if (!reps_set) opt.reps = 5;
  }
  if (opt.tiny) {
    opt.models = {kTiny};
    opt.gemm_tokens = opt.rows = opt.loss_rows = 64;
    opt.attention_tokens = opt.attention_width = 256;
    opt.seqs = {256};
    opt.gqa_seqs = {256};
    if (!reps_set) opt.reps = 1;
    if (!warmup_set) opt.warmup = 0;
  }
  if (!seqs.empty()) {
    opt.gqa_seqs.erase(std::remove_if(opt.gqa_seqs.begin(), opt.gqa_seqs.end(),
                                      [&](int64_t t) { return std::find(seqs.begin(), seqs.end(), t) == seqs.end(); }),
                       opt.gqa_seqs.end());
    opt.seqs = seqs;
  }

  if (latam::cuda::DeviceCount() == 0) {
    std::fprintf(stderr, "bench_cuda_kernels: no CUDA GPU visible, nothing to benchmark\n");
    return 0;
  }
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  int runtime = 0, driver = 0;
  CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  CUDA_CHECK(cudaDriverGetVersion(&driver));
  std::printf(
      "{\"impl\": \"ours\", \"device\": \"%s\", \"cc\": \"%d.%d\", \"sms\": %d, \"mem_gib\": %.1f, "
      "\"l2_mib\": %.1f, \"cuda_runtime\": %d, \"cuda_driver\": %d, \"quick\": %s, \"tiny\": %s}\n",
      JsonEscape(prop.name).c_str(), prop.major, prop.minor, prop.multiProcessorCount,
      static_cast<double>(prop.totalGlobalMem) / (1 << 30), static_cast<double>(prop.l2CacheSize) / (1 << 20), runtime,
      driver, opt.quick ? "true" : "false", opt.tiny ? "true" : "false");
  std::fflush(stdout);

  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreate(&stream));
  BenchGemms(opt, stream);
  BenchAttention(opt, stream);
  BenchNorms(opt, stream);
  BenchSwiglu(opt, stream);
  BenchRope(opt, stream);
  BenchCrossEntropy(opt, stream);
  BenchOptimizer(opt, stream);
  CUDA_CHECK(cudaStreamSynchronize(stream));
  CUDA_CHECK(cudaStreamDestroy(stream));
  return 0;
}
