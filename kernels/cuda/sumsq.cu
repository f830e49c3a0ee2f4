// sumsq.cu — sum of squares of a bf16 vector, in double, synchronous. Deterministic: a fixed
// grid of CT_SUMSQ_BLOCKS blocks (never sized by the GPU's SM count) each sums a grid-stride
// share in double with fixed-order block reductions into ctx->sumsq_partials; one block then
// sums the partials in a fixed order. Squares of bf16 values are exact in double.
#include "sumsq.cuh"

#define SUMSQ_THREADS 256

__global__ void sumsq_partial_kernel(double *partials, const bf16 *g, size_t n)
{
    __shared__ double sh[32];
    double acc = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double x = (double)ct_ld(g + i);
        acc += x * x;
    }
    acc = ct_block_sum(acc, sh);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void sumsq_final_kernel(double *partials, int nparts)
{
    __shared__ double sh[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += partials[i];
    acc = ct_block_sum(acc, sh);
    if (threadIdx.x == 0) partials[nparts] = acc;
}

double ct_cuda_sumsq(ct_kctx *ctx, const void *g, size_t n)
{
    if (n == 0) return 0.0;
    sumsq_partial_kernel<<<CT_SUMSQ_BLOCKS, SUMSQ_THREADS, 0, ctx->stream>>>(ctx->sumsq_partials, (const bf16 *)g, n);
    CT_LAUNCH_CHECK(ctx);
    sumsq_final_kernel<<<1, SUMSQ_THREADS, 0, ctx->stream>>>(ctx->sumsq_partials, CT_SUMSQ_BLOCKS);
    CT_LAUNCH_CHECK(ctx);
    CT_CUDA_CHECK(cudaMemcpyAsync(ctx->sumsq_host, ctx->sumsq_partials + CT_SUMSQ_BLOCKS, sizeof(double),
                                  cudaMemcpyDeviceToHost, ctx->stream));
    CT_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    return *ctx->sumsq_host;
}
