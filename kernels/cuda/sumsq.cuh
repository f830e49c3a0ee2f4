// sumsq.cuh — private: the CUDA sumsq op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_SUMSQ_CUH
#define CT_KERNELS_CUDA_SUMSQ_CUH

#include "common.cuh"

double ct_cuda_sumsq(ct_kctx *ctx, const void *g, size_t n);
#endif
