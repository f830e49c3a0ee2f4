/* attention.c — causal self-attention with grouped-query heads and an optional sliding
 * window, fp32 on the CPU (GPT-2: NKV = NH, window 0; Llama/Mistral: NKV < NH, window).
 *
 * Row (b,t) of q (stride ldq) holds NH heads of D channels, rows of k and v (stride ldkv)
 * NKV heads; query head h reads kv head h / G, G = NH / NKV. In row b, key s is visible to
 * query t iff lo(t) <= s <= t, lo(t) = max(t - pos[b*T+t], window ? t - window + 1 : 0): the
 * keys of t's own document (pos NULL: one document, lo from the window alone). Both terms
 * never decrease with t (the document rule, kernels.h), which the bands below rely on.
 * out[B*T, NH*D].
 *
 * stats layout, attention_stats_len(B,T,NH) floats:
 *   probs   [B,NH,T,T]      softmax rows (row stride T); see "bands" below for which
 *                           entries are written
 *   scratch [B,NH,RB',T]    RB' = min(RB,T): one row block of dP per (b,h) for backward
 * Backward overwrites probs with scale*dS (the pre-softmax gradient), so it runs once per
 * forward.
 *
 * Bands. Queries go in row blocks of RB; row block [r0,r1) sees keys [cb(r0), r1), where
 * cb(r0) = lo(r0) rounded down to a multiple of RB: only those columns of its rows are
 * computed (blocks right of the diagonal and, with a window or packed documents, left of it
 * are skipped) and written, invisible entries inside them as exact zeros. The backward's
 * column blocks [c0,c1) read rows c0 .. e(c1), e(c1) = one past the last query that sees key
 * c1 - 1: min(T, c1 - 1 + window) with a window, the end of key c1 - 1's document with pos
 * (T without either). A row t < e(c1) has lo(t) <= c1 - 1, so its block's cb is at most c0
 * (both block-aligned) and its band contains [c0,c1): every probability the backward reads
 * was written by the forward.
 *
 * Parallelism, deterministic for any thread count (each output element is produced by one
 * work item in a fixed order, no atomics; BLAS runs single-threaded inside the region):
 *   forward   one item per (b, h, row block): it owns those rows of probs and out;
 *   backward  one item per (b, kv head), its query heads in order, when there are enough
 *             of them for the threads; otherwise three phases: dV per (b, kv head, column
 *             block), dS and dQ per (b, h), dK per (b, kv head, column block). Both give
 *             the same bits (see ct_cpu_attention_bwd).
 * GQA makes G query heads add into one kv head's dk/dv: splitting by kv head (and column
 * block), not by query head, is what keeps those sums race-free and ordered. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "cpu.h"
#include "vmath.h"

/* Row-block size: larger blocks mean fewer BLAS calls, smaller ones less work wasted
 * above the diagonal (the fraction computed is (nb+1)/nb of the causal triangle). */
#define RB 64

static int imin(int a, int b) { return a < b ? a : b; }
static int imax(int a, int b) { return a > b ? a : b; }

/* first key visible to query t of row b: prow = pos + b*T, or NULL (one document) */
static int vis_lo(const int32_t *prow, int t, int window)
{
    return imax(window > 0 ? t - window + 1 : 0, prow ? t - prow[t] : 0);
}

/* first column computed for the row block starting at r0 (block-aligned, see "Bands") */
static int band_lo(const int32_t *prow, int r0, int window) { return vis_lo(prow, r0, window) / RB * RB; }

/* one past the last query that sees a key in [c0, c1): the window's reach, cut at the next
 * document start after key c1 - 1 */
static int rows_end(const int32_t *prow, int c1, int T, int window)
{
    int e = window > 0 ? imin(T, c1 - 1 + window) : T;
    for (int t = c1; prow && t < e; t++)
        if (prow[t] == 0) return t;
    return e;
}

static const int32_t *pos_row(const int32_t *pos, int b, int T) { return pos ? pos + (size_t)b * T : NULL; }

/* Softmax of row[0..len) in place (row holds scaled scores). */
static void softmax_row(float *row, int len)
{
    float mx = ct_vmax(row, len);
    for (int i = 0; i < len; i++) row[i] = ct_vexpf(row[i] - mx);
    float inv = 1.0f / ct_vsum(row, len);
    for (int i = 0; i < len; i++) row[i] *= inv;
}

size_t ct_cpu_attention_stats_len(int B, int T, int NH)
{
    return (size_t)B * NH * T * ((size_t)T + (size_t)imin(RB, T));
}

void ct_cpu_attention_fwd(ct_kctx *ctx, void *out_, float *stats, const void *q_, const void *k_, const void *v_,
                          const int32_t *pos, int B, int T, int NH, int NKV, int D, int ldq, int ldkv, int window)
{
    float *out = out_;
    const float *qall = q_, *kall = k_, *vall = v_;
    const int G = NH / NKV, C = NH * D, nb = (T + RB - 1) / RB;
    const float scale = 1.0f / sqrtf((float)D);

    /* later row blocks cost more (longer rows): dynamic scheduling balances them, and
     * which thread runs an item never changes its result */
#pragma omp parallel for schedule(dynamic)
    for (long item = 0; item < (long)B * NH * nb; item++) {
        const int bh = (int)(item / nb), b = bh / NH, h = bh % NH;
        const int32_t *prow = pos_row(pos, b, T);
        const int r0 = (int)(item % nb) * RB, r1 = imin(T, r0 + RB), m = r1 - r0, c0 = band_lo(prow, r0, window);
        const float *q = qall + (size_t)b * T * ldq + (size_t)h * D;
        const float *k = kall + (size_t)b * T * ldkv + (size_t)(h / G) * D;
        const float *v = vall + (size_t)b * T * ldkv + (size_t)(h / G) * D;
        float *o = out + (size_t)b * T * C + (size_t)h * D;
        float *P = stats + (size_t)bh * T * T;

        /* S[r0:r1, c0:r1] = scale * Q[r0:r1] K[c0:r1]^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r1 - c0, D, scale, q + (size_t)r0 * ldq, ldq,
                    k + (size_t)c0 * ldkv, ldkv, 0.0f, P + (size_t)r0 * T + c0, T);
        for (int t = r0; t < r1; t++) {
            float *row = P + (size_t)t * T;
            const int lo = vis_lo(prow, t, window);
            /* zeros outside [lo, t] within the band: the block products read them */
            memset(row + c0, 0, (size_t)(lo - c0) * sizeof(float));
            softmax_row(row + lo, t + 1 - lo);
            memset(row + t + 1, 0, (size_t)(r1 - t - 1) * sizeof(float));
        }
        /* O[r0:r1] = P[r0:r1, c0:r1] V[c0:r1] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, r1 - c0, 1.0f, P + (size_t)r0 * T + c0, T,
                    v + (size_t)c0 * ldkv, ldkv, 0.0f, o + (size_t)r0 * C, C);
    }
}

/* dX[c0:c1] += sum over query heads h in [h0, h1) (all of one kv head's group) of
 * A_h[c0:e, c0:c1]^T Y_h[c0:e], A_h = head h's probs (dV, Y = dO) or dS (dK, Y = Q),
 * e = rows_end(c1): one column block of a kv head's dk or dv, its heads summed in order. */
static void kv_block_grad(float *dX, int ldx, const float *A, const float *Y, int ldy, const int32_t *pos, int b,
                          int h0, int h1, int c0, int T, int NH, int D, int window)
{
    const int c1 = imin(T, c0 + RB), e = rows_end(pos_row(pos, b, T), c1, T, window);
    for (int h = h0; h < h1; h++) {
        const float *Ah = A + ((size_t)b * NH + h) * T * T;
        const float *Yh = Y + (size_t)b * T * ldy + (size_t)h * D;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c1 - c0, D, e - c0, 1.0f, Ah + (size_t)c0 * T + c0, T,
                    Yh + (size_t)c0 * ldy, ldy, 1.0f, dX + (size_t)c0 * ldx, ldx);
    }
}

/* Query head (b,h): dS over its probs in place, row block by row block through its scratch
 * dP, and dQ += dS K. */
static void head_ds_dq(float *dqall, float *stats, const float *dout, const float *kall, const float *vall,
                       const int32_t *pos, int b, int h, int B, int T, int NH, int G, int D, int ldq, int ldkv,
                       int window)
{
    const int32_t *prow = pos_row(pos, b, T);
    const int C = NH * D;
    const float scale = 1.0f / sqrtf((float)D);
    const float *k = kall + (size_t)b * T * ldkv + (size_t)(h / G) * D;
    const float *v = vall + (size_t)b * T * ldkv + (size_t)(h / G) * D;
    const float *dO = dout + (size_t)b * T * C + (size_t)h * D;
    float *dq = dqall + (size_t)b * T * ldq + (size_t)h * D;
    float *P = stats + ((size_t)b * NH + h) * T * T;
    /* scratch after all probs; row t of the block at dP + (t-r0)*T */
    float *dP = stats + (size_t)B * NH * T * T + ((size_t)b * NH + h) * imin(RB, T) * T;

    for (int r0 = 0; r0 < T; r0 += RB) {
        const int r1 = imin(T, r0 + RB), m = r1 - r0, c0 = band_lo(prow, r0, window);
        /* dP[0:m, c0:r1] = dO[r0:r1] V[c0:r1]^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r1 - c0, D, 1.0f, dO + (size_t)r0 * C, C,
                    v + (size_t)c0 * ldkv, ldkv, 0.0f, dP + c0, T);
        /* softmax backward, in place over P: dS = P * (dP - sum(P * dP)), scaled here once
         * so the products need no alpha; invisible entries stay 0 */
        for (int t = r0; t < r1; t++) {
            const int lo = vis_lo(prow, t, window);
            float *p = P + (size_t)t * T;
            const float *dp = dP + (size_t)(t - r0) * T;
            const float d = ct_vdot(p + lo, dp + lo, t + 1 - lo);
            for (int s = lo; s <= t; s++) p[s] = scale * (p[s] * (dp[s] - d));
        }
        /* dQ[r0:r1] += dS[r0:r1, c0:r1] K[c0:r1] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, r1 - c0, 1.0f, P + (size_t)r0 * T + c0, T,
                    k + (size_t)c0 * ldkv, ldkv, 1.0f, dq + (size_t)r0 * ldq, ldq);
    }
}

/* Two schedules, the same BLAS calls on the same operands, and every gradient element
 * receiving its terms in the same order (query heads ascending): identical bits, so the
 * choice may depend on the thread count.
 *   - per kv head: one item per (b, kv head) runs each query head's whole backward in turn
 *     (dV, dS and dQ, dK), while that head's probs are still in cache. Used when there are
 *     enough items to occupy the threads.
 *   - phased: dV over (b, kv head, column block) items, then dS/dQ over (b, h), then dK
 *     over (b, kv head, column block): finer work, but each phase streams every head's
 *     probs through memory. */
void ct_cpu_attention_bwd(ct_kctx *ctx, void *dq_, void *dk_, void *dv_, float *stats, const void *dout_,
                          const void *q_, const void *k_, const void *v_, const void *out_, const int32_t *pos, int B,
                          int T, int NH, int NKV, int D, int ldq, int ldkv, int window)
{
    float *dqall = dq_, *dkall = dk_, *dvall = dv_;
    const float *dout = dout_, *qall = q_, *kall = k_, *vall = v_;
    const int G = NH / NKV, C = NH * D, nb = (T + RB - 1) / RB;
    const long kv_items = (long)B * NKV * nb;
#define DK(b, kvh) (dkall + (size_t)(b) * T * ldkv + (size_t)(kvh) * D)
#define DV(b, kvh) (dvall + (size_t)(b) * T * ldkv + (size_t)(kvh) * D)

    if (B * NKV >= 2 * omp_get_max_threads()) {
#pragma omp parallel for schedule(dynamic)
        for (int bk = 0; bk < B * NKV; bk++) {
            const int b = bk / NKV, kvh = bk % NKV;
            for (int h = kvh * G; h < (kvh + 1) * G; h++) {
                for (int c0 = 0; c0 < T; c0 += RB)
                    kv_block_grad(DV(b, kvh), ldkv, stats, dout, C, pos, b, h, h + 1, c0, T, NH, D, window);
                head_ds_dq(dqall, stats, dout, kall, vall, pos, b, h, B, T, NH, G, D, ldq, ldkv, window);
                for (int c0 = 0; c0 < T; c0 += RB)
                    kv_block_grad(DK(b, kvh), ldkv, stats, qall, ldq, pos, b, h, h + 1, c0, T, NH, D, window);
            }
        }
        return;
    }

#pragma omp parallel
    {
        /* dV[c0:c1] += sum_h P_h[c0:e, c0:c1]^T dO_h[c0:e], before dS overwrites P */
#pragma omp for schedule(dynamic)
        for (long item = 0; item < kv_items; item++) {
            const int bk = (int)(item / nb), b = bk / NKV, kvh = bk % NKV;
            kv_block_grad(DV(b, kvh), ldkv, stats, dout, C, pos, b, kvh * G, (kvh + 1) * G, (int)(item % nb) * RB,
                          T, NH, D, window);
        }
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * NH; bh++)
            head_ds_dq(dqall, stats, dout, kall, vall, pos, bh / NH, bh % NH, B, T, NH, G, D, ldq, ldkv, window);
        /* dK[c0:c1] += sum_h dS_h[c0:e, c0:c1]^T Q_h[c0:e] */
#pragma omp for schedule(dynamic)
        for (long item = 0; item < kv_items; item++) {
            const int bk = (int)(item / nb), b = bk / NKV, kvh = bk % NKV;
            kv_block_grad(DK(b, kvh), ldkv, stats, qall, ldq, pos, b, kvh * G, (kvh + 1) * G, (int)(item % nb) * RB,
                          T, NH, D, window);
        }
    }
#undef DK
#undef DV
}
