/* attention.c — causal multi-head self-attention (GPT-2), fp32 on the CPU.
 *
 * qkv[B*T,3C]: row (b,t) holds q | k | v, head h in channels h*hs..(h+1)*hs-1 of each
 * (hs = C/NH). out[B*T,C] holds head h's result in channels h*hs... .
 *
 * stats layout, attention_stats_len(B,T,NH) floats:
 *   probs   [B,NH,T,T]      softmax rows; row t holds P[t,0..t], zeros after t
 *   scratch [B,NH,RB',T]    RB' = min(RB,T): one row block of dP per (b,h) for backward
 * Backward overwrites probs with scale*dS (the pre-softmax gradient), so it runs once per
 * forward.
 *
 * Each (b,h) pair is one OpenMP work item: dk/dv of a position collect terms from every
 * later query of the same head, so whole heads per thread need no atomics and give the
 * same bits for any thread count. Inside a head the products go through single-threaded
 * sgemm on row blocks of RB queries, computing only the blocks on or below the causal
 * diagonal. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "cpu.h"
#include "vmath.h"

/* Row-block size: larger blocks mean fewer BLAS calls, smaller ones less work wasted
 * above the diagonal (the fraction computed is (nb+1)/nb of the causal triangle). */
#define RB 64

static int imin(int a, int b) { return a < b ? a : b; }

/* Sums with 16 fixed lanes: vectorises without reassociation, so the result does not
 * depend on the data's address. */
static float sum_f32(const float *x, int n)
{
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += x[i + j];
    for (; i < n; i++) acc[i & 15] += x[i];
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

static float dot_f32(const float *x, const float *y, int n)
{
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += x[i + j] * y[i + j];
    for (; i < n; i++) acc[i & 15] += x[i] * y[i];
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

/* Maximum is exact in any order, so an OpenMP simd reduction is safe here. */
static float max_f32(const float *x, int n)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* Softmax of row[0..len) in place (row holds scaled scores). */
static void softmax_row(float *row, int len)
{
    float mx = max_f32(row, len);
    for (int i = 0; i < len; i++) row[i] = ct_vexpf(row[i] - mx);
    float inv = 1.0f / sum_f32(row, len);
    for (int i = 0; i < len; i++) row[i] *= inv;
}

size_t ct_cpu_attention_stats_len(int B, int T, int NH)
{
    return (size_t)B * NH * T * ((size_t)T + (size_t)imin(RB, T));
}

void ct_cpu_attention_fwd(ct_kctx *ctx, void *out_, float *stats, const void *qkv_, int B, int T, int C, int NH)
{
    float *out = out_;
    const float *qkv = qkv_;
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);

#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const float *q = qkv + (size_t)b * T * C3 + (size_t)h * hs;
        const float *k = q + C, *v = q + 2 * C;
        float *o = out + (size_t)b * T * C + (size_t)h * hs;
        float *P = stats + (size_t)bh * T * T;

        for (int r0 = 0; r0 < T; r0 += RB) {
            const int r1 = imin(T, r0 + RB), m = r1 - r0;
            /* S[r0:r1, 0:r1] = scale * Q[r0:r1] K[0:r1]^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r1, hs, scale, q + (size_t)r0 * C3, C3, k,
                        C3, 0.0f, P + (size_t)r0 * T, T);
            for (int t = r0; t < r1; t++) {
                float *row = P + (size_t)t * T;
                softmax_row(row, t + 1);
                /* zeros above the diagonal: the block products below read them */
                memset(row + t + 1, 0, (size_t)(T - t - 1) * sizeof(float));
            }
            /* O[r0:r1] = P[r0:r1, 0:r1] V[0:r1] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, hs, r1, 1.0f, P + (size_t)r0 * T, T, v, C3,
                        0.0f, o + (size_t)r0 * C, C);
        }
    }
}

void ct_cpu_attention_bwd(ct_kctx *ctx, void *dqkv_, float *stats, const void *dout_, const void *qkv_,
                          const void *out_, int B, int T, int C, int NH)
{
    float *dqkv = dqkv_;
    const float *dout = dout_, *qkv = qkv_;
    const int hs = C / NH, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)hs);
    float *scratch_all = stats + (size_t)B * NH * T * T;
    const size_t scratch_len = (size_t)imin(RB, T) * T;

#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const float *q = qkv + (size_t)b * T * C3 + (size_t)h * hs;
        const float *k = q + C, *v = q + 2 * C;
        const float *dO = dout + (size_t)b * T * C + (size_t)h * hs;
        float *dq = dqkv + (size_t)b * T * C3 + (size_t)h * hs;
        float *dk = dq + C, *dv = dq + 2 * C;
        float *P = stats + (size_t)bh * T * T;
        float *dP = scratch_all + (size_t)bh * scratch_len;

        /* dV[c0:c1] += P[c0:T, c0:c1]^T dO[c0:T]; rows above c0 are zero in those columns */
        for (int c0 = 0; c0 < T; c0 += RB) {
            const int c1 = imin(T, c0 + RB);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c1 - c0, hs, T - c0, 1.0f,
                        P + (size_t)c0 * T + c0, T, dO + (size_t)c0 * C, C, 1.0f, dv + (size_t)c0 * C3, C3);
        }

        for (int r0 = 0; r0 < T; r0 += RB) {
            const int r1 = imin(T, r0 + RB), m = r1 - r0;
            /* dP[0:m, 0:r1] = dO[r0:r1] V[0:r1]^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r1, hs, 1.0f, dO + (size_t)r0 * C, C, v, C3,
                        0.0f, dP, T);
            /* softmax backward, in place over P: dS = P * (dP - sum(P * dP)), scaled
             * here once so the two products below need no alpha */
            for (int t = r0; t < r1; t++) {
                float *p = P + (size_t)t * T;
                const float *dp = dP + (size_t)(t - r0) * T;
                const float d = dot_f32(p, dp, t + 1);
                for (int t2 = 0; t2 <= t; t2++) p[t2] = scale * (p[t2] * (dp[t2] - d));
            }
            /* dQ[r0:r1] += dS[r0:r1, 0:r1] K[0:r1] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, hs, r1, 1.0f, P + (size_t)r0 * T, T, k, C3,
                        1.0f, dq + (size_t)r0 * C3, C3);
        }

        /* dK[c0:c1] += dS[c0:T, c0:c1]^T Q[c0:T] */
        for (int c0 = 0; c0 < T; c0 += RB) {
            const int c1 = imin(T, c0 + RB);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c1 - c0, hs, T - c0, 1.0f,
                        P + (size_t)c0 * T + c0, T, q + (size_t)c0 * C3, C3, 1.0f, dk + (size_t)c0 * C3, C3);
        }
    }
}
