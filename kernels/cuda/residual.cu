// residual.cu — the residual connection on CUDA: out = a + b, and its backward, which adds
// dout into both input gradients.
#include "residual.cuh"

// eight elements per thread per step with 16-byte accesses where the pointers allow (VEC)
template <bool VEC> __global__ void residual_fwd_kernel(bf16 *out, const bf16 *a, const bf16 *b, size_t n)
{
    ct_map2<VEC>(out, a, b, n, [](float x, float y) { return x + y; });
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
    ct_launch_map(ctx, residual_fwd_kernel<true>, residual_fwd_kernel<false>,
                  ct_aligned16(out) && ct_aligned16(a) && ct_aligned16(b), n, (bf16 *)out, (const bf16 *)a,
                  (const bf16 *)b, n);
}

void ct_cuda_residual_bwd(ct_kctx *ctx, void *da, void *db, const void *dout, size_t n)
{
    if (n == 0) return;
    residual_bwd_kernel<<<ct_blocks(n, 256), 256, 0, ctx->stream>>>((bf16 *)da, (bf16 *)db, (const bf16 *)dout, n);
    CT_LAUNCH_CHECK(ctx);
}
