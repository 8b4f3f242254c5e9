// RMSNorm (Llama): per row m of x[M,D],
//   rstd[m] = 1 / sqrt(mean_j x[m,j]^2 + eps)
//   y[m,j]  = x[m,j] * rstd[m] * w[j]
// Backward, with g = dy * w (elementwise):
//   dx[m,j] = rstd[m] * g[m,j] - x[m,j] * rstd[m]^3 * (sum_k g[m,k] x[m,k]) / D
//   dw[j]  += sum_m dy[m,j] * x[m,j] * rstd[m]
// fp32 on the CPU. rstd is saved by the forward for the backward.
// Row reductions for dw are summed in fixed-size row blocks in block order, so
// results do not depend on the thread count.
#pragma once

#include "core/tensor.h"

namespace latam::cpu {

// y and rstd are overwritten. y may alias x.
void RmsNormForward(const Tensor& x, const Tensor& w, float eps, const Tensor& y, const Tensor& rstd);

// dx is overwritten (accumulate_dx=false) or added to (true); dw is always
// accumulated.
void RmsNormBackward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dx,
                     bool accumulate_dx, const Tensor& dw);

}  // namespace latam::cpu
