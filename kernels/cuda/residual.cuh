// residual.cuh — private: the CUDA residual op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_RESIDUAL_CUH
#define CT_KERNELS_CUDA_RESIDUAL_CUH

#include "common.cuh"

void ct_cuda_residual_fwd(ct_kctx *ctx, void *out, const void *a, const void *b, size_t n);
void ct_cuda_residual_bwd(ct_kctx *ctx, void *da, void *db, const void *dout, size_t n);
#endif
