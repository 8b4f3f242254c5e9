#include "model/lora.h"

#include "core/check.h"
#include "kernels/gemm.h"

namespace latam {

void LoraForward(ModelOps& ops, const LoraSite& site, float scale, const Tensor& x, const Tensor& u,
                 const Tensor& y) {
  const int64_t m = x.shape.rows(), in = x.shape.cols(), r = site.a.shape.rows(), out = site.b.shape.rows();
  // u = x A^T; y[:, off ..] += s u B^T.
  ops.StridedGemm(false, true, m, r, in, 1.0f, {x, 0, in}, {site.a, 0, in}, 0.0f, {u, 0, r});
  ops.StridedGemm(false, true, m, out, r, scale, {u, 0, r}, {site.b, 0, r}, 1.0f,
                  {y, site.out_offset, site.out_stride});
}

void LoraBackward(ModelOps& ops, const LoraSite& site, float scale, const Tensor& x, const Tensor& dy,
                  const Tensor& dx, const Tensor& u, const Tensor& du) {
  const int64_t m = x.shape.rows(), in = x.shape.cols(), r = site.a.shape.rows(), out = site.b.shape.rows();
  const ModelOps::GemmOperand dy_block{dy, site.out_offset, site.out_stride};
  ops.StridedGemm(false, true, m, r, in, 1.0f, {x, 0, in}, {site.a, 0, in}, 0.0f, {u, 0, r});  // u = x A^T
  ops.StridedGemm(true, false, out, r, m, scale, dy_block, {u, 0, r}, 1.0f, {site.db, 0, r});  // dB += s dy^T u
  ops.StridedGemm(false, false, m, r, out, scale, dy_block, {site.b, 0, r}, 0.0f, {du, 0, r});  // du = s dy B
  ops.StridedGemm(true, false, r, in, m, 1.0f, {du, 0, r}, {x, 0, in}, 1.0f, {site.da, 0, in});  // dA += du^T x
  ops.StridedGemm(false, false, m, in, r, 1.0f, {du, 0, r}, {site.a, 0, in}, 1.0f, {dx, 0, in});  // dx += du A
}

void MergeLora(const ParameterSet& adapter, const LoraOptions& lora, const ParameterSet& base) {
  const float s = lora.scale();
  for (size_t i = 0; i + 1 < adapter.size(); i += 2) {
    // Specs come in (A, B) pairs of one module: "<module>.lora_A.weight".
    const std::string& a_name = adapter.spec(i).name;
    const std::string module = a_name.substr(0, a_name.size() - std::string(".lora_A.weight").size());
    LATAM_CHECK(adapter.spec(i + 1).name == module + ".lora_B.weight", "adapter tensors out of order at " << a_name);
    const Tensor a = adapter.param(i), b = adapter.param(i + 1), w = base.param(module + ".weight");
    const int64_t out = w.shape.rows(), in = w.shape.cols(), r = a.shape.rows();
    LATAM_CHECK(a.shape.cols() == in && b.shape.rows() == out && b.shape.cols() == r,
                "adapter " << module << " does not fit its base weight " << w.shape.str());
    // W[out, in] += s B[out, r] A[r, in].
    cpu::Gemm(false, false, out, in, r, s, b.as<float>(), r, a.as<float>(), in, 1.0f, w.as<float>(), in);
  }
}

}  // namespace latam
