// colsum.cu — deterministic column sums in two stages (see colsum.cuh).
#include "colsum.cuh"

#define COLSUM_ROWS 8 // threadIdx.y: rows a block reads at once (32 columns x 8 rows)

// Stage one: block (x, y) sums columns c0 + 32x .. +31 over row chunk y. With LN, a is the
// layernorm weight's term dout * xhat and b the bias's dout (mean NULL: RMSNorm's xhat = inp *
// rstd); without, a is src itself.
template <bool LN>
__global__ void colsum_part_kernel(float *part_a, float *part_b, const bf16 *src, const bf16 *inp,
                                   const float *mean, const float *rstd, int N, int M, int c0, int ncols,
                                   int rows_per_chunk)
{
    __shared__ float sa[COLSUM_ROWS][33], sb[COLSUM_ROWS][33];
    const int tx = threadIdx.x, ty = threadIdx.y, i = blockIdx.x * 32 + tx, c = c0 + i;
    const int n0 = blockIdx.y * rows_per_chunk, n1 = min(N, n0 + rows_per_chunk);
    float a = 0.0f, b = 0.0f;
    if (i < ncols)
        for (int n = n0 + ty; n < n1; n += COLSUM_ROWS) {
            const float d = ct_ld(src + (size_t)n * M + c);
            if (LN) {
                a += d * ((ct_ld(inp + (size_t)n * M + c) - (mean ? mean[n] : 0.0f)) * rstd[n]);
                b += d;
            } else {
                a += d;
            }
        }
    sa[ty][tx] = a;
    sb[ty][tx] = b;
    __syncthreads();
    if (ty == 0 && i < ncols) {
        float ta = 0.0f, tb = 0.0f;
        for (int y = 0; y < COLSUM_ROWS; y++) {
            ta += sa[y][tx];
            tb += sb[y][tx];
        }
        part_a[(size_t)blockIdx.y * CT_COLSUM_COLS + i] = ta;
        if (LN) part_b[(size_t)blockIdx.y * CT_COLSUM_COLS + i] = tb;
    }
}

// Stage two: column c0 + i adds its chunks in order into the bf16 gradients (either may be NULL).
__global__ void colsum_finish_kernel(bf16 *dst_a, bf16 *dst_b, const float *part_a, const float *part_b, int chunks,
                                     int c0, int ncols)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= ncols) return;
    float ta = 0.0f, tb = 0.0f;
    for (int s = 0; s < chunks; s++) {
        ta += part_a[(size_t)s * CT_COLSUM_COLS + i];
        if (dst_b) tb += part_b[(size_t)s * CT_COLSUM_COLS + i];
    }
    if (dst_a) dst_a[c0 + i] = ct_bf(ct_ld(dst_a + c0 + i) + ta);
    if (dst_b) dst_b[c0 + i] = ct_bf(ct_ld(dst_b + c0 + i) + tb);
}

template <bool LN>
static void colsum(ct_kctx *ctx, bf16 *dst_a, bf16 *dst_b, const bf16 *src, const bf16 *inp, const float *mean,
                   const float *rstd, int N, int M)
{
    if (N <= 0 || M <= 0 || (!dst_a && !dst_b)) return;
    const int chunks = min(CT_COLSUM_CHUNKS, (N + 63) / 64); // at least 64 rows a chunk
    const int rows_per_chunk = (N + chunks - 1) / chunks;
    float *part_a = ctx->colsum_partials, *part_b = ctx->colsum_partials + (size_t)CT_COLSUM_CHUNKS * CT_COLSUM_COLS;
    for (int c0 = 0; c0 < M; c0 += CT_COLSUM_COLS) {
        const int ncols = min(CT_COLSUM_COLS, M - c0);
        colsum_part_kernel<LN><<<dim3((ncols + 31) / 32, chunks), dim3(32, COLSUM_ROWS), 0, ctx->stream>>>(
            part_a, part_b, src, inp, mean, rstd, N, M, c0, ncols, rows_per_chunk);
        CT_LAUNCH_CHECK(ctx);
        colsum_finish_kernel<<<(ncols + 255) / 256, 256, 0, ctx->stream>>>(dst_a, LN ? dst_b : NULL, part_a, part_b,
                                                                           chunks, c0, ncols);
        CT_LAUNCH_CHECK(ctx);
    }
}

void ct_cuda_colsum_add(ct_kctx *ctx, bf16 *dst, const bf16 *src, int N, int M)
{
    colsum<false>(ctx, dst, NULL, src, NULL, NULL, NULL, N, M);
}

void ct_cuda_layernorm_param_add(ct_kctx *ctx, bf16 *dw, bf16 *db, const bf16 *dout, const bf16 *inp,
                                 const float *mean, const float *rstd, int N, int C)
{
    colsum<true>(ctx, dw, db, dout, inp, mean, rstd, N, C);
}

void ct_cuda_rmsnorm_param_add(ct_kctx *ctx, bf16 *dw, const bf16 *dout, const bf16 *inp, const float *rstd, int N,
                               int C)
{
    colsum<true>(ctx, dw, NULL, dout, inp, NULL, rstd, N, C);
}
