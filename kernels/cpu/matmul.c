/* matmul.c — the linear layer on the CPU: out[N,M] = inp[N,K] . w[M,K]^T + bias[M], and its
 * backward. The products go to OpenBLAS sgemm, one call per block of rows of the output, the
 * blocks fixed by the shape alone and run by OpenMP threads; the bias and its gradient are
 * plain loops here.
 *
 * Why not let sgemm thread itself: OpenBLAS picks its code path by the threads it may use
 * (on AVX-512 machines a mid-sized product goes to its single-threaded "direct" kernel with one
 * thread and to the blocked one with several, which round differently), so its bits would
 * depend on the thread count. Inside an active parallel region it runs single-threaded, and a
 * block's result depends only on the block. */
#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "cpu.h"

/* Below this many elements a parallel region costs more than it saves. */
#define MM_PAR_MIN 16384

/* Rows per block when n rows are split: at most 32 blocks, at least 64 rows (a multiple of 16),
 * from the shape alone. */
static int block_rows(int n)
{
    int b = (n + 31) / 32;
    b = (b + 15) / 16 * 16;
    return b < 64 ? 64 : b;
}

/* C[rows, :] of a row-major product, one sgemm per block of rows of C. a_rows_step: how far A
 * moves per row of C (lda for A untransposed, 1 for A transposed). */
static void sgemm_rows(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int rows, int cols, int k, float alpha,
                       const float *a, int lda, size_t a_rows_step, const float *b, int ldb, float beta, float *c,
                       int ldc)
{
    const int rb = block_rows(rows), nb = (rows + rb - 1) / rb;
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < nb; i++) {
        int r0 = i * rb, n = rows - r0 < rb ? rows - r0 : rb;
        cblas_sgemm(CblasRowMajor, ta, tb, n, cols, k, alpha, a + (size_t)r0 * a_rows_step, lda, b, ldb, beta,
                    c + (size_t)r0 * ldc, ldc);
    }
}
#define MM_SLICE_MAX 256 /* columns per slice of the dbias reduction (stack accumulators) */

void ct_cpu_matmul_fwd(ct_kctx *ctx, void *out_, const void *inp_, const void *w_, const void *bias_,
                       int N, int K, int M)
{
    float *out = out_;
    const float *inp = inp_, *w = w_, *bias = bias_;
    if (N <= 0 || M <= 0) return;
    /* Seed out with the bias and let sgemm add into it (beta = 1): one write-only pass
     * instead of a read-modify-write pass after the product. */
    if (bias) {
#pragma omp parallel for schedule(static) if ((long)N * M >= MM_PAR_MIN)
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * M, bias, (size_t)M * sizeof(float));
    }
    if (K <= 0) {
        if (!bias) memset(out, 0, (size_t)N * M * sizeof(float));
        return;
    }
    /* One or two rows (decoding a token at a time): sgemm would copy all of w into its packed
     * layout for each call, which costs more than the product; sgemv reads w once per row. */
    if (N <= 2) {
        for (int n = 0; n < N; n++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, M, K, 1.0f, w, K, inp + (size_t)n * K, 1, bias ? 1.0f : 0.0f,
                        out + (size_t)n * M, 1);
        return;
    }
    sgemm_rows(CblasNoTrans, CblasTrans, N, M, K, 1.0f, inp, K, (size_t)K, w, K, bias ? 1.0f : 0.0f, out, M);
}

/* dinp[N,K] += dout[N,M] . w[M,K];  dw[M,K] += dout^T . inp;  dbias[M] += sum_n dout[n,:].
 * dbias is split into column slices, each summed over all rows in order by one thread:
 * deterministic for any thread count, no atomics, no scratch memory. */
void ct_cpu_matmul_bwd(ct_kctx *ctx, void *dinp_, void *dw_, void *dbias_, const void *dout_, const void *inp_,
                       const void *w_, int N, int K, int M)
{
    float *dinp = dinp_, *dw = dw_, *dbias = dbias_;
    const float *dout = dout_, *inp = inp_, *w = w_;
    if (N <= 0 || M <= 0) return;
    if (dw && K > 0)
        sgemm_rows(CblasTrans, CblasNoTrans, M, K, N, 1.0f, dout, M, 1, inp, K, 1.0f, dw, K);
    if (dbias) {
        int nt = omp_get_max_threads();
        int slice = (M + nt - 1) / nt;
        slice = (slice + 15) / 16 * 16;
        if (slice > MM_SLICE_MAX) slice = MM_SLICE_MAX;
        if (slice < 16) slice = 16;
#pragma omp parallel for schedule(static) if ((long)N * M >= MM_PAR_MIN)
        for (int m0 = 0; m0 < M; m0 += slice) {
            int k = M - m0 < slice ? M - m0 : slice;
            float acc[MM_SLICE_MAX] = {0};
            for (int n = 0; n < N; n++) {
                const float *d = dout + (size_t)n * M + m0;
                for (int c = 0; c < k; c++) acc[c] += d[c];
            }
            for (int c = 0; c < k; c++) dbias[m0 + c] += acc[c];
        }
    }
    /* last: then dinp may even share memory with inp, which dw reads */
    if (dinp && K > 0)
        sgemm_rows(CblasNoTrans, CblasNoTrans, N, K, M, 1.0f, dout, M, (size_t)M, w, K, 1.0f, dinp, K);
}
