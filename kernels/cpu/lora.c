/* lora.c — a LoRA adapter beside a linear layer on the CPU (PEFT's formulation):
 *   h[N,r] = drop(x)[N,K] . A[r,K]^T,   out[N,M] += scale * h . B[M,r]^T
 * and its backward. The products go to OpenBLAS sgemm; the dropout mask is regenerated from
 * (seed, element index) by dropout.h, never stored, so forward and backward agree and the
 * result does not depend on the thread count. */
#include <cblas.h>
#include <string.h>

#include "cpu.h"
#include "dropout.h"

#define LORA_PAR_MIN 32768 /* below this many elements a parallel region costs more than it saves */

/* dh[N,r] first, padded to whole cache lines so drop(x) after it starts 64-byte aligned
 * (scratch comes from the backend's aligned alloc). */
static size_t dh_len(int N, int r) { return ((size_t)N * r + 15) / 16 * 16; }

size_t ct_cpu_lora_scratch_len(int N, int K, int r)
{
    if (N <= 0 || K <= 0 || r <= 0) return 0;
    return dh_len(N, r) + (size_t)N * K;
}

/* xd[i] = x[i] / (1 - p) where element i is kept, else 0, for the n elements of x */
static void drop_apply(float *xd, const float *x, size_t n, float p, uint64_t seed)
{
    uint32_t thr = ct_dropout_threshold(p);
    float inv = 1.0f / (1.0f - p);
#pragma omp parallel for simd schedule(static) if (parallel : n >= LORA_PAR_MIN)
    for (size_t i = 0; i < n; i++) xd[i] = ct_dropout_keep(seed, i, thr) ? x[i] * inv : 0.0f;
}

/* dx[i] += t[i] where element i is kept (t already carries scale / (1 - p)) */
static void drop_add_grad(float *dx, const float *t, size_t n, float p, uint64_t seed)
{
    uint32_t thr = ct_dropout_threshold(p);
#pragma omp parallel for simd schedule(static) if (parallel : n >= LORA_PAR_MIN)
    for (size_t i = 0; i < n; i++) dx[i] += ct_dropout_keep(seed, i, thr) ? t[i] : 0.0f;
}

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
    const float *xa = x;
    if (p > 0.0f) {
        float *xd = (float *)scratch + dh_len(N, r);
        drop_apply(xd, x, (size_t)N * K, p, seed);
        xa = xd;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, r, K, 1.0f, xa, K, A, K, 0.0f, h, r);
    if (M > 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, M, r, scale, h, r, B, r, 1.0f, out, M);
}

/* With dh = dout . B (into scratch):
 *   dB += scale * dout^T . h;   dA += scale * dh^T . drop(x);   dx += scale * drop'(dh . A).
 * For p > 0, drop(x) is rebuilt into scratch for dA, and the same region then receives
 * dh . A * scale / (1 - p), which the mask adds into dx. dx is written last, so it may even
 * share memory with x. */
void ct_cpu_lora_bwd(ct_kctx *ctx, void *dx_, void *dA_, void *dB_, const void *dout_, const void *x_,
                     const void *h_, const void *A_, const void *B_, void *scratch, int N, int K, int M, int r,
                     float scale, float p, uint64_t seed)
{
    float *dx = dx_, *dA = dA_, *dB = dB_;
    const float *dout = dout_, *x = x_, *h = h_, *A = A_, *B = B_;
    if (N <= 0 || K <= 0 || M <= 0 || r <= 0) return; /* every gradient is empty or zero */
    if (dB) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, r, N, scale, dout, M, h, r, 1.0f, dB, r);
    if (!dA && !dx) return;

    float *dh = scratch, *xd = (float *)scratch + dh_len(N, r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, r, M, 1.0f, dout, M, B, r, 0.0f, dh, r);
    if (dA) {
        const float *xa = x;
        if (p > 0.0f) {
            drop_apply(xd, x, (size_t)N * K, p, seed);
            xa = xd;
        }
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, K, N, scale, dh, r, xa, K, 1.0f, dA, K);
    }
    if (dx) {
        if (p > 0.0f) {
            float c = scale * (1.0f / (1.0f - p));
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, K, r, c, dh, r, A, K, 0.0f, xd, K);
            drop_add_grad(dx, xd, (size_t)N * K, p, seed);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, K, r, scale, dh, r, A, K, 1.0f, dx, K);
        }
    }
}
