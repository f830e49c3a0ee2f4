// swiglu.cuh — private: the CUDA SwiGLU op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_SWIGLU_CUH
#define CT_KERNELS_CUDA_SWIGLU_CUH

#include "common.cuh"

void ct_cuda_swiglu_fwd(ct_kctx *ctx, void *out, const void *gate, const void *up, size_t n);
void ct_cuda_swiglu_bwd(ct_kctx *ctx, void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                        size_t n);
#endif
