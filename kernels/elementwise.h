// Element-wise helpers on f32 CPU tensors of equal shape.
#pragma once

#include "core/tensor.h"

namespace latam::cpu {

// out = a + b (out may alias a or b).
void Add(const Tensor& a, const Tensor& b, const Tensor& out);

}  // namespace latam::cpu
