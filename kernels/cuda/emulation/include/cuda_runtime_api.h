// See cuda_runtime.h beside this file.
#pragma once
#include "cuda_runtime.h"
