// layernorm.cuh — private: the CUDA layernorm op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_LAYERNORM_CUH
#define CT_KERNELS_CUDA_LAYERNORM_CUH

#include "common.cuh"

void ct_cuda_layernorm_fwd(ct_kctx *ctx, void *out, float *mean, float *rstd, const void *inp,
                           const void *w, const void *b, int N, int C, float eps);
void ct_cuda_layernorm_bwd(ct_kctx *ctx, void *dinp, void *dw, void *db, const void *dout, const void *inp,
                           const void *w, const float *mean, const float *rstd, int N, int C);
#endif
