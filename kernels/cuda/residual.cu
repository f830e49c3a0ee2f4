// residual.cu — the residual connection on CUDA: out = a + b, and its backward, which adds
// dout into both input gradients.
#include "residual.cuh"

// eight elements per thread per step with 16-byte accesses where the pointers allow (VEC)
template <bool VEC> __global__ void residual_fwd_kernel(bf16 *out, const bf16 *a, const bf16 *b, size_t n)
{
    const size_t stride = (size_t)gridDim.x * blockDim.x, t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t head = 0;
    if (VEC) {
        head = n / 8 * 8;
        for (size_t i = t * 8; i < head; i += stride * 8) {
            float x[8], y[8];
            ct_ld8(x, a + i);
            ct_ld8(y, b + i);
#pragma unroll
            for (int k = 0; k < 8; k++) x[k] += y[k];
            ct_st8(out + i, x);
        }
    }
    for (size_t i = head + t; i < n; i += stride) out[i] = ct_bf(ct_ld(a + i) + ct_ld(b + i));
}

// No __restrict__: da may equal db (x + x) or dout. dout is read first and db is re-read
// after da is written, so every aliasing case adds dout's original value into both, as on
// the CPU.
__global__ void residual_bwd_kernel(bf16 *da, bf16 *db, const bf16 *dout, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float d = ct_ld(dout + i);
        da[i] = ct_bf(ct_ld(da + i) + d);
        db[i] = ct_bf(ct_ld(db + i) + d);
    }
}

void ct_cuda_residual_fwd(ct_kctx *ctx, void *out, const void *a, const void *b, size_t n)
{
    if (n == 0) return;
    if (ct_aligned16(out) && ct_aligned16(a) && ct_aligned16(b))
        residual_fwd_kernel<true><<<ct_blocks((n + 7) / 8, 256), 256, 0, ctx->stream>>>((bf16 *)out, (const bf16 *)a,
                                                                                     (const bf16 *)b, n);
    else
        residual_fwd_kernel<false><<<ct_blocks(n, 256), 256, 0, ctx->stream>>>((bf16 *)out, (const bf16 *)a,
                                                                              (const bf16 *)b, n);
    CT_LAUNCH_CHECK(ctx);
}

void ct_cuda_residual_bwd(ct_kctx *ctx, void *da, void *db, const void *dout, size_t n)
{
    if (n == 0) return;
    residual_bwd_kernel<<<ct_blocks(n, 256), 256, 0, ctx->stream>>>((bf16 *)da, (bf16 *)db, (const bf16 *)dout, n);
    CT_LAUNCH_CHECK(ctx);
}
