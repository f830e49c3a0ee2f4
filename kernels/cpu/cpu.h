/* cpu.h — private: the CPU backend's op implementations, fp32 throughout.
 * Semantics are those of the matching slots in kernels.h (`void *` is float * here). */
#ifndef CT_KERNELS_CPU_H
#define CT_KERNELS_CPU_H

#include <omp.h>

#include "kernels.h"

/* Channel-slice width for backward reductions split by channel (each slice summed over all
 * rows, in order, by one thread: no atomics): about C / threads rounded up to a multiple of
 * 16 floats (whole cache lines), at least 16 and at most max (0: no cap). The summation
 * order never depends on it. */
static inline int ct_cpu_channel_slice(int C, int max)
{
    int nt = omp_get_max_threads();
    int w = (C + nt - 1) / nt;
    w = (w + 15) / 16 * 16;
    if (max && w > max) w = max;
    return w < 16 ? 16 : w;
}

void ct_cpu_encoder_fwd(ct_kctx *ctx, void *out, const int32_t *tokens, const int32_t *pos, const void *wte,
                        const void *wpe, int B, int T, int C);
void ct_cpu_encoder_bwd(ct_kctx *ctx, void *dwte, void *dwpe, const void *dout, const int32_t *tokens,
                        const int32_t *pos, int B, int T, int C);
void ct_cpu_layernorm_fwd(ct_kctx *ctx, void *out, float *mean, float *rstd, const void *inp, const void *w,
                          const void *b, int N, int C, float eps);
void ct_cpu_layernorm_bwd(ct_kctx *ctx, void *dinp, void *dw, void *db, const void *dout, const void *inp,
                          const void *w, const float *mean, const float *rstd, int N, int C);
void ct_cpu_matmul_fwd(ct_kctx *ctx, void *out, const void *inp, const void *w, const void *bias,
                       int N, int K, int M);
void ct_cpu_matmul_bwd(ct_kctx *ctx, void *dinp, void *dw, void *dbias, const void *dout, const void *inp,
                       const void *w, int N, int K, int M);
size_t ct_cpu_attention_stats_len(int B, int T, int NH);
void ct_cpu_attention_fwd(ct_kctx *ctx, void *out, float *stats, const void *q, const void *k, const void *v,
                          const int32_t *pos, int B, int T, int NH, int NKV, int D, int ldq, int ldkv, int window);
void ct_cpu_attention_bwd(ct_kctx *ctx, void *dq, void *dk, void *dv, float *stats, const void *dout,
                          const void *q, const void *k, const void *v, const void *out, const int32_t *pos, int B,
                          int T, int NH, int NKV, int D, int ldq, int ldkv, int window);
void ct_cpu_attention_decode(ct_kctx *ctx, void *out, const void *q, const void *kc, const void *vc, int B, int Tq,
                             int pos0, int maxT, int NH, int NKV, int D, int ldq, int window);
void ct_cpu_copy_rows(ct_kctx *ctx, void *dst, int ldd, const void *src, int lds, int rows, int cols);
void ct_cpu_rmsnorm_fwd(ct_kctx *ctx, void *out, float *rstd, const void *inp, const void *w, int N, int C,
                        float eps);
void ct_cpu_rmsnorm_bwd(ct_kctx *ctx, void *dinp, void *dw, const void *dout, const void *inp, const void *w,
                        const float *rstd, int N, int C);
void ct_cpu_rope_fwd(ct_kctx *ctx, void *x, const int32_t *pos, const float *inv_freq, int N, int nh, int D, int ld);
void ct_cpu_rope_bwd(ct_kctx *ctx, void *dx, const int32_t *pos, const float *inv_freq, int N, int nh, int D, int ld);
void ct_cpu_swiglu_fwd(ct_kctx *ctx, void *out, const void *gate, const void *up, size_t n);
void ct_cpu_swiglu_bwd(ct_kctx *ctx, void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                       size_t n);
void ct_cpu_gelu_fwd(ct_kctx *ctx, void *out, const void *inp, size_t n);
void ct_cpu_gelu_bwd(ct_kctx *ctx, void *dinp, const void *inp, const void *dout, size_t n);
void ct_cpu_residual_fwd(ct_kctx *ctx, void *out, const void *a, const void *b, size_t n);
void ct_cpu_residual_bwd(ct_kctx *ctx, void *da, void *db, const void *dout, size_t n);
void ct_cpu_xent(ct_kctx *ctx, float *losses, void *logits, const int32_t *targets, float dloss, int N, int V,
                 int ld);
void ct_cpu_adamw(ct_kctx *ctx, float *master, void *param, float *m, float *v, const void *grad, size_t n,
                  const ct_adamw_params *p);
double ct_cpu_sumsq(ct_kctx *ctx, const void *g, size_t n);
void ct_cpu_lora_fwd(ct_kctx *ctx, void *out, void *h, const void *x, const void *A, const void *B,
                     void *scratch, int N, int K, int M, int r, float scale, float p, uint64_t seed);
size_t ct_cpu_lora_scratch_len(int N, int K, int r);
void ct_cpu_lora_bwd(ct_kctx *ctx, void *dx, void *dA, void *dB, const void *dout, const void *x, const void *h,
                     const void *A, const void *B, void *scratch, int N, int K, int M, int r, float scale, float p,
                     uint64_t seed);

#endif
