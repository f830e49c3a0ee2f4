// rmsnorm.cuh — private: the CUDA RMSNorm op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_RMSNORM_CUH
#define CT_KERNELS_CUDA_RMSNORM_CUH

#include "common.cuh"

void ct_cuda_rmsnorm_fwd(ct_kctx *ctx, void *out, float *rstd, const void *inp, const void *w, int N, int C, float eps);
void ct_cuda_rmsnorm_bwd(ct_kctx *ctx, void *dinp, void *dw, const void *dout, const void *inp, const void *w,
                         const float *rstd, int N, int C);
#endif
