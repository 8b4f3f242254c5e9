// Gradient norm and clipping helpers.
//
// SumOfSquares accumulates in double over fixed-size blocks summed in block
// order, so the result does not depend on the thread count. The global
// gradient norm is sqrt of the sum over every parameter's SumOfSquares
// (callers sum across shards and ranks before the sqrt).
#pragma once

#include "core/tensor.h"

namespace latam::cpu {

double SumOfSquares(const Tensor& x);
// x *= factor, in place.
void Scale(const Tensor& x, float factor);

}  // namespace latam::cpu
