// AdamW with decoupled weight decay (Loshchilov & Hutter), fp32.
//
// With step t >= 1 (1-based, counts optimizer steps taken including this one):
//   m  = beta1 m + (1 - beta1) g
//   v  = beta2 v + (1 - beta2) g^2
//   p -= lr * ( (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * p )
// param, exp_avg (m) and exp_avg_sq (v) are updated in place; grad is read.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace latam {

struct AdamWHyper {
  float lr = 0.0f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  int64_t step = 1;
};

}  // namespace latam

namespace latam::cpu {

void AdamWUpdate(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const AdamWHyper& hyper);

}  // namespace latam::cpu
