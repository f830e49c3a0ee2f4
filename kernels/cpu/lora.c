/* lora.c — a LoRA adapter beside a linear layer on the CPU (PEFT's formulation):
 *   h[N,r] = drop(x)[N,K] . A[r,K]^T,   out[N,M] += scale * h . B[M,r]^T
 * and its backward. The dropout mask is regenerated from (seed, element index) by dropout.h,
 * never stored, so forward and backward agree whatever the thread count.
 *
 * The products are OpenBLAS sgemm calls on tiles of fixed size, spread over threads by
 * OpenMP; inside a parallel region OpenBLAS runs single-threaded. Tiling here rather than
 * letting OpenBLAS thread one big call is what makes results independent of the thread
 * count: OpenBLAS 0.3.21 (Cooperlake kernels) gives different bits with 1 and 2 threads for
 * shapes such as [8,515]^T . [515,257], because its split of a skinny matrix hands the pieces
 * to differently ordered microkernels. Each tile owns a block of outputs and sums over its
 * whole reduction in one call, so no result depends on which thread ran it. */
#include <cblas.h>
#include <string.h>

#include "cpu.h"
#include "dropout.h"

#define LORA_ROWS 64 /* rows of x, out, dx per tile */
#define LORA_COLS 32 /* columns of dA, rows of dB per tile (parameter-gradient reductions) */

/* dh[N,r] first, padded to whole cache lines so drop(x) after it starts 64-byte aligned
 * (scratch comes from the backend's aligned alloc). */
static size_t dh_len(int N, int r) { return ((size_t)N * r + 15) / 16 * 16; }

size_t ct_cpu_lora_scratch_len(int N, int K, int r)
{
    if (N <= 0 || K <= 0 || r <= 0) return 0;
    return dh_len(N, r) + (size_t)N * K;
}

/* xd[i] = x[i] / (1 - p) where element base + i of x is kept, else 0, for i < n */
static void drop_apply(float *xd, const float *x, size_t base, size_t n, uint32_t thr, float inv, uint64_t seed)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) xd[i] = ct_dropout_keep(seed, base + i, thr) ? x[i] * inv : 0.0f;
}

/* dx[i] += t[i] where element base + i is kept (t already carries scale / (1 - p)) */
static void drop_add_grad(float *dx, const float *t, size_t base, size_t n, uint32_t thr, uint64_t seed)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) dx[i] += ct_dropout_keep(seed, base + i, thr) ? t[i] : 0.0f;
}

/* Per row tile: drop(x) into scratch (p > 0), h = drop(x) . A^T, out += scale * h . B^T. */
void ct_cpu_lora_fwd(ct_kctx *ctx, void *out_, void *h_, const void *x_, const void *A_, const void *B_,
                     void *scratch, int N, int K, int M, int r, float scale, float p, uint64_t seed)
{
    float *out = out_, *h = h_;
    const float *x = x_, *A = A_, *B = B_;
    if (N <= 0 || r <= 0) return;
    if (K <= 0) {
        memset(h, 0, (size_t)N * r * sizeof(float)); /* out gains nothing */
        return;
    }
    float *xd = p > 0.0f ? (float *)scratch + dh_len(N, r) : NULL;
    uint32_t thr = ct_dropout_threshold(p);
    float inv = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
    for (int n0 = 0; n0 < N; n0 += LORA_ROWS) {
        int nb = N - n0 < LORA_ROWS ? N - n0 : LORA_ROWS;
        size_t at = (size_t)n0 * K;
        const float *xa = x + at;
        if (xd) {
            drop_apply(xd + at, x + at, at, (size_t)nb * K, thr, inv, seed);
            xa = xd + at;
        }
        float *ht = h + (size_t)n0 * r;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, r, K, 1.0f, xa, K, A, K, 0.0f, ht, r);
        if (M > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, M, r, scale, ht, r, B, r, 1.0f,
                        out + (size_t)n0 * M, M);
    }
}

/* With dh = dout . B (into scratch):
 *   dB += scale * dout^T . h;   dA += scale * dh^T . drop(x);   dx += scale * drop'(dh . A).
 * Three passes: row tiles (dh, and drop(x) into scratch when p > 0 and dA is wanted); tiles of
 * dA's columns and dB's rows, each reducing over all N rows; row tiles again for dx, which for
 * p > 0 reuses drop(x)'s scratch rows for dh . A * scale / (1 - p) before the mask adds it in.
 * dx is written last, so it may even share memory with x. */
void ct_cpu_lora_bwd(ct_kctx *ctx, void *dx_, void *dA_, void *dB_, const void *dout_, const void *x_,
                     const void *h_, const void *A_, const void *B_, void *scratch, int N, int K, int M, int r,
                     float scale, float p, uint64_t seed)
{
    float *dx = dx_, *dA = dA_, *dB = dB_;
    const float *dout = dout_, *x = x_, *h = h_, *A = A_, *B = B_;
    if (N <= 0 || K <= 0 || M <= 0 || r <= 0) return; /* every gradient is empty or zero */
    if (!dx && !dA && !dB) return;
    float *dh = scratch, *xd = p > 0.0f ? (float *)scratch + dh_len(N, r) : NULL;
    const float *xa = xd ? xd : x;
    uint32_t thr = ct_dropout_threshold(p);
    float inv = 1.0f / (1.0f - p);
    int need_dh = dA || dx;

#pragma omp parallel
    {
        if (need_dh) {
#pragma omp for schedule(static)
            for (int n0 = 0; n0 < N; n0 += LORA_ROWS) {
                int nb = N - n0 < LORA_ROWS ? N - n0 : LORA_ROWS;
                size_t at = (size_t)n0 * K;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, r, M, 1.0f, dout + (size_t)n0 * M, M,
                            B, r, 0.0f, dh + (size_t)n0 * r, r);
                if (xd && dA) drop_apply(xd + at, x + at, at, (size_t)nb * K, thr, inv, seed);
            }
        }
        /* the parameter gradients: tiles of dA's columns, then of dB's rows, in one loop */
        int ta = dA ? (K + LORA_COLS - 1) / LORA_COLS : 0;
        int tb = dB ? (M + LORA_COLS - 1) / LORA_COLS : 0;
#pragma omp for schedule(static)
        for (int t = 0; t < ta + tb; t++) {
            if (t < ta) {
                int k0 = t * LORA_COLS, kb = K - k0 < LORA_COLS ? K - k0 : LORA_COLS;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, kb, N, scale, dh, r, xa + k0, K, 1.0f,
                            dA + k0, K);
            } else {
                int m0 = (t - ta) * LORA_COLS, mb = M - m0 < LORA_COLS ? M - m0 : LORA_COLS;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, mb, r, N, scale, dout + m0, M, h, r, 1.0f,
                            dB + (size_t)m0 * r, r);
            }
        }
        if (dx) {
#pragma omp for schedule(static)
            for (int n0 = 0; n0 < N; n0 += LORA_ROWS) {
                int nb = N - n0 < LORA_ROWS ? N - n0 : LORA_ROWS;
                size_t at = (size_t)n0 * K;
                const float *dht = dh + (size_t)n0 * r;
                if (xd) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, K, r, scale * inv, dht, r, A, K,
                                0.0f, xd + at, K);
                    drop_add_grad(dx + at, xd + at, at, (size_t)nb * K, thr, seed);
                } else {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, K, r, scale, dht, r, A, K, 1.0f,
                                dx + at, K);
                }
            }
        }
    }
}
