// attention.cuh — private: the CUDA attention ops (semantics: the matching slots in kernels.h).
// Limits (an unsupported shape aborts with the op's name and shape): head size D 1..128 (tiles
// padded to 16/32/64/128; 16-byte loads where D, ldq, ldkv are multiples of 8 and the pointers
// 16-byte aligned, element loads otherwise), NH a multiple of NKV, B*NH <= 2^31-1,
// T <= 65535*32; decode: pos0 + Tq <= maxT, B*Tq*NH <= 2^31-1.
#ifndef CT_KERNELS_CUDA_ATTENTION_CUH
#define CT_KERNELS_CUDA_ATTENTION_CUH

#include "common.cuh"

size_t ct_cuda_attention_stats_len(int B, int T, int NH);
void ct_cuda_attention_fwd(ct_kctx *ctx, void *out, float *stats, const void *q, const void *k, const void *v,
                           const int32_t *pos, int B, int T, int NH, int NKV, int D, int ldq, int ldkv, int window);
void ct_cuda_attention_bwd(ct_kctx *ctx, void *dq, void *dk, void *dv, float *stats, const void *dout, const void *q,
                           const void *k, const void *v, const void *out, const int32_t *pos, int B, int T, int NH,
                           int NKV, int D, int ldq, int ldkv, int window);
void ct_cuda_attention_decode(ct_kctx *ctx, void *out, const void *q, const void *kc, const void *vc, int B, int Tq,
                              int pos0, int maxT, int NH, int NKV, int D, int ldq, int window);
#endif
