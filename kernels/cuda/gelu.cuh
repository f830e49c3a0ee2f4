// gelu.cuh — private: the CUDA gelu op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_GELU_CUH
#define CT_KERNELS_CUDA_GELU_CUH

#include "common.cuh"

void ct_cuda_gelu_fwd(ct_kctx *ctx, void *out, const void *inp, size_t n);
void ct_cuda_gelu_bwd(ct_kctx *ctx, void *dinp, const void *inp, const void *dout, size_t n);
#endif
