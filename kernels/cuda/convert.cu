// convert.cu — fp32 <-> bf16 on the device (the to_storage and to_f32 slots). bf16 rounding
// is to nearest, ties to even (__float2bfloat16_rn); NaN stays NaN.
#include "convert.cuh"

__global__ void to_bf16_kernel(bf16 *dst, const float *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = ct_bf(src[i]);
}

__global__ void to_f32_kernel(float *dst, const bf16 *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = ct_ld(src + i);
}

void ct_cuda_to_storage(ct_kctx *ctx, void *dst, const float *src, size_t n)
{
    if (n == 0) return;
    to_bf16_kernel<<<ct_blocks(n, 256), 256, 0, ctx->stream>>>((bf16 *)dst, src, n);
    CT_LAUNCH_CHECK(ctx);
}

void ct_cuda_to_f32(ct_kctx *ctx, float *dst, const void *src, size_t n)
{
    if (n == 0) return;
    to_f32_kernel<<<ct_blocks(n, 256), 256, 0, ctx->stream>>>(dst, (const bf16 *)src, n);
    CT_LAUNCH_CHECK(ctx);
}
