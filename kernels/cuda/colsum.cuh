// colsum.cuh — private: sums down the rows of [N, M] bf16 matrices into per-column gradients
// (a linear layer's bias, a layernorm's weight and bias, an RMSNorm's weight), in two
// deterministic stages: blocks of row chunks write fp32 partial sums into the context's
// scratch, then one thread per column adds its chunks in order. The chunking depends only on N, so the bits never depend on the
// GPU. Stage one spreads a 768-wide sum over 16384 rows across ~1500 blocks instead of 24.
#ifndef CT_KERNELS_CUDA_COLSUM_CUH
#define CT_KERNELS_CUDA_COLSUM_CUH

#include "common.cuh"

#define CT_COLSUM_CHUNKS 64   // row chunks summed in parallel
#define CT_COLSUM_COLS 8192   // columns per pass: scratch is 2 x CHUNKS x COLS floats (4 MiB)

// dst[c] += sum_n src[n, c], c < M
void ct_cuda_colsum_add(ct_kctx *ctx, bf16 *dst, const bf16 *src, int N, int M);
// dw[c] += sum_n dout[n, c] * (inp[n, c] - mean[n]) * rstd[n]; db[c] += sum_n dout[n, c];
// either may be NULL
void ct_cuda_layernorm_param_add(ct_kctx *ctx, bf16 *dw, bf16 *db, const bf16 *dout, const bf16 *inp,
                                 const float *mean, const float *rstd, int N, int C);
// dw[c] += sum_n dout[n, c] * inp[n, c] * rstd[n] (RMSNorm's weight); no-op when dw is NULL
void ct_cuda_rmsnorm_param_add(ct_kctx *ctx, bf16 *dw, const bf16 *dout, const bf16 *inp, const float *rstd, int N,
                               int C);
#endif
