// attention.cuh — private: the CUDA attention op (semantics: the matching slots in kernels.h).
#ifndef CT_KERNELS_CUDA_ATTENTION_CUH
#define CT_KERNELS_CUDA_ATTENTION_CUH

#include "common.cuh"

size_t ct_cuda_attention_stats_len(int B, int T, int NH);
void ct_cuda_attention_fwd(ct_kctx *ctx, void *out, float *stats, const void *qkv, int B, int T, int C, int NH);
void ct_cuda_attention_bwd(ct_kctx *ctx, void *dqkv, float *stats, const void *dout, const void *qkv,
                           const void *out, int B, int T, int C, int NH);
#endif
