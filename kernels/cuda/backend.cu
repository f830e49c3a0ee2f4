// backend.cu — the CUDA backend's table.
//
// The CUDA ops are not written yet: until they are, this build reports no CUDA backend and
// every run uses the CPU backend. Compiling this file keeps the CUDA toolchain (nvcc, sm_80
// and sm_90 targets, cudart and cuBLASLt linkage) exercised by every build that has nvcc.
#include <cuda_runtime.h>

extern "C" {
#include "kernels.h"

const ct_backend *ct_cuda_backend_table(void) { return NULL; }
}
