// matmul.cuh — private: the CUDA matmul op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_MATMUL_CUH
#define CT_KERNELS_CUDA_MATMUL_CUH

#include "common.cuh"

void ct_cuda_matmul_fwd(ct_kctx *ctx, void *out, const void *inp, const void *w, const void *bias,
                        int N, int K, int M);
void ct_cuda_matmul_bwd(ct_kctx *ctx, void *dinp, void *dw, void *dbias, const void *dout, const void *inp,
                        const void *w, int N, int K, int M);
// dst[M] += sum over rows of src[N,M] (bf16), deterministic; shared with layernorm-like reductions
void ct_cuda_colsum_add(ct_kctx *ctx, bf16 *dst, const bf16 *src, int N, int M);
#endif
