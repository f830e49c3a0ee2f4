// layernorm.cu — LayerNorm over the last axis on CUDA (torch.nn.LayerNorm: biased variance,
// eps inside the square root), bf16 in and out, mean and rstd fp32, fp32 arithmetic.
// Every reduction has a fixed order (warp shuffles, then a fixed shared-memory pass), so
// results are deterministic run to run.
#include "colsum.cuh"
#include "layernorm.cuh"

#define LN_THREADS 256 // 8 warps: one row per warp in the row kernels

// one warp per row; two passes over the row (mean, then squared deviations) like the CPU
__global__ void layernorm_fwd_kernel(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *w,
                                     const bf16 *b, int N, int C, float eps)
{
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;
    const bf16 *x = inp + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += ct_ld(x + c);
    const float m = ct_warp_sum(s) / C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = ct_ld(x + c) - m;
        v += d * d;
    }
    const float rs = 1.0f / sqrtf(ct_warp_sum(v) / C + eps);
    bf16 *o = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) o[c] = ct_bf((ct_ld(x + c) - m) * rs * ct_ld(w + c) + ct_ld(b + c));
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = rs;
    }
}

// dinp += rstd * (g - mean(g) - xhat * mean(g * xhat)), g = w * dout; one warp per row.
// Each element of dout and inp is read before the same thread writes dinp's element, so
// dinp may share memory with either.
__global__ void layernorm_dinp_kernel(bf16 *dinp, const bf16 *dout, const bf16 *inp, const bf16 *w,
                                      const float *mean, const float *rstd, int N, int C)
{
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;
    const bf16 *x = inp + (size_t)row * C, *d = dout + (size_t)row * C;
    bf16 *dx = dinp + (size_t)row * C;
    const float m = mean[row], s = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float g = ct_ld(w + c) * ct_ld(d + c);
        sg += g;
        sgx += g * ((ct_ld(x + c) - m) * s);
    }
    const float mg = ct_warp_sum(sg) / C, mgx = ct_warp_sum(sgx) / C;
    for (int c = lane; c < C; c += 32) {
        float xhat = (ct_ld(x + c) - m) * s;
        float g = ct_ld(w + c) * ct_ld(d + c);
        dx[c] = ct_bf(ct_ld(dx + c) + s * (g - mg - xhat * mgx));
    }
}

void ct_cuda_layernorm_fwd(ct_kctx *ctx, void *out, float *mean, float *rstd, const void *inp, const void *w,
                           const void *b, int N, int C, float eps)
{
    if (N <= 0 || C <= 0) return;
    const int rows_per_block = LN_THREADS / 32;
    layernorm_fwd_kernel<<<(N + rows_per_block - 1) / rows_per_block, LN_THREADS, 0, ctx->stream>>>(
        (bf16 *)out, mean, rstd, (const bf16 *)inp, (const bf16 *)w, (const bf16 *)b, N, C, eps);
    CT_LAUNCH_CHECK(ctx);
}

void ct_cuda_layernorm_bwd(ct_kctx *ctx, void *dinp, void *dw, void *db, const void *dout, const void *inp,
                           const void *w, const float *mean, const float *rstd, int N, int C)
{
    if (N <= 0 || C <= 0) return;
    // parameter pass first: dinp may alias dout or inp, which it reads
    ct_cuda_layernorm_param_add(ctx, (bf16 *)dw, (bf16 *)db, (const bf16 *)dout, (const bf16 *)inp, mean, rstd, N, C);
    const int rows_per_block = LN_THREADS / 32;
    layernorm_dinp_kernel<<<(N + rows_per_block - 1) / rows_per_block, LN_THREADS, 0, ctx->stream>>>(
        (bf16 *)dinp, (const bf16 *)dout, (const bf16 *)inp, (const bf16 *)w, mean, rstd, N, C);
    CT_LAUNCH_CHECK(ctx);
}
