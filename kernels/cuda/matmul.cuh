// matmul.cuh — private: the CUDA matmul op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_MATMUL_CUH
#define CT_KERNELS_CUDA_MATMUL_CUH

#include "common.cuh"

void ct_cuda_matmul_fwd(ct_kctx *ctx, void *out, const void *inp, const void *w, const void *bias,
                        int N, int K, int M);
void ct_cuda_matmul_bwd(ct_kctx *ctx, void *dinp, void *dw, void *dbias, const void *dout, const void *inp,
                        const void *w, int N, int K, int M);
#endif
