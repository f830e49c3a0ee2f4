// adamw.cuh — private: the CUDA adamw op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_ADAMW_CUH
#define CT_KERNELS_CUDA_ADAMW_CUH

#include "common.cuh"

void ct_cuda_adamw(ct_kctx *ctx, float *master, void *param, float *m, float *v, const void *grad, size_t n,
                   const ct_adamw_params *p);
#endif
