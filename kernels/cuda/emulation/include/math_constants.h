// The toolkit's math constants the kernels use, for the host emulation.
#pragma once
#include <cmath>
#define CUDART_INF_F HUGE_VALF
