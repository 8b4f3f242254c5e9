// bf16 types and conversions as the host emulation provides them
// (kernels/cuda/simt_emulation.h).
#pragma once
#include "kernels/cuda/simt_emulation.h"
