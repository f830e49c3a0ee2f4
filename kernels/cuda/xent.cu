// xent.cu — fused softmax + cross-entropy on CUDA, in place over bf16 logits[N,V]:
// forward turns each row into its softmax (bf16) and writes losses[i] = logsumexp(row) -
// row[target] in fp32 (0 where target < 0 or targets is NULL); backward overwrites probs with
// (probs - onehot) * dloss, zero rows where ignored. One block per row; fp32 arithmetic with
// fixed-order block reductions (deterministic).
#include "xent.cuh"

#define XENT_THREADS 512

__global__ void xent_fwd_kernel(float *losses, bf16 *logits, const int32_t *targets, int V)
{
    __shared__ float sh[32];
    bf16 *x = logits + (size_t)blockIdx.x * V;
    const int t = targets ? targets[blockIdx.x] : -1;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, ct_ld(x + j));
    mx = ct_block_max(mx, sh);
    // x[t] is read by every thread before the barrier inside ct_block_sum; no element is
    // written until after it
    const float xt = t >= 0 ? ct_ld(x + t) : mx;
    float s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(ct_ld(x + j) - mx);
    s = ct_block_sum(s, sh);
    if (threadIdx.x == 0) losses[blockIdx.x] = t >= 0 ? logf(s) - (xt - mx) : 0.0f;
    const float inv = 1.0f / s;
    for (int j = threadIdx.x; j < V; j += blockDim.x) x[j] = ct_bf(expf(ct_ld(x + j) - mx) * inv);
}

__global__ void xent_bwd_kernel(bf16 *probs, const int32_t *targets, float dloss, size_t N, int V)
{
    const size_t n = N * (size_t)V;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int t = targets ? targets[i / V] : -1;
        const int j = (int)(i % V);
        float g = 0.0f;
        if (t >= 0) g = (ct_ld(probs + i) - (j == t ? 1.0f : 0.0f)) * dloss;
        probs[i] = ct_bf(g);
    }
}

void ct_cuda_xent_fwd(ct_kctx *ctx, float *losses, void *logits, const int32_t *targets, int N, int V)
{
    if (N <= 0 || V <= 0) return;
    xent_fwd_kernel<<<N, XENT_THREADS, 0, ctx->stream>>>(losses, (bf16 *)logits, targets, V);
    CT_LAUNCH_CHECK(ctx);
}

void ct_cuda_xent_bwd(ct_kctx *ctx, void *probs, const int32_t *targets, float dloss, int N, int V)
{
    if (N <= 0 || V <= 0) return;
    size_t n = (size_t)N * V;
    xent_bwd_kernel<<<ct_blocks(n, 256), 256, 0, ctx->stream>>>((bf16 *)probs, targets, dloss, (size_t)N, V);
    CT_LAUNCH_CHECK(ctx);
}
