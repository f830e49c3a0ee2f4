// xent.cu — the classifier's loss and gradient in one kernel, in place over bf16 logits (N rows
// ld apart, V classes, the columns past V padding that gets a zero gradient):
// losses[i] = logsumexp(row) - row[target] in fp32, and the row becomes (softmax - onehot) *
// dloss; ignored rows (target < 0, or targets NULL) get loss 0 and a zero row. One block per
// row reads the row twice (an online max-and-sum pass, then the gradient pass) and writes it
// once: the [N,V] logits never make a separate round trip for the backward.
// fp32 arithmetic, fixed-order reductions: deterministic.
#include "xent.cuh"

#define XENT_THREADS 512

// (max, sum of exp(x - max)) pairs, merged; a pair with sum 0 is empty (its max may be -inf,
// and -inf - -inf must not turn into NaN).
struct ct_msum {
    float m, s;
};
__device__ __forceinline__ ct_msum ct_msum_merge(ct_msum a, ct_msum b)
{
    if (a.s == 0.0f) return b;
    if (b.s == 0.0f) return a;
    const float m = fmaxf(a.m, b.m);
    return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ ct_msum ct_block_msum(ct_msum v, ct_msum *sh)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v = ct_msum_merge(v, {__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)});
    __syncthreads(); // sh may still be read by a previous call
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : ct_msum{-INFINITY, 0.0f};
    for (int o = 16; o > 0; o >>= 1)
        v = ct_msum_merge(v, {__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)});
    return v;
}

__global__ void xent_kernel(float *losses, bf16 *logits, const int32_t *targets, float dloss, int V, int ld)
{
    __shared__ ct_msum sh[32];
    bf16 *x = logits + (size_t)blockIdx.x * ld;
    const int t = targets ? targets[blockIdx.x] : -1;
    for (int j = V + threadIdx.x; j < ld; j += blockDim.x) x[j] = ct_bf(0.0f); // padding: no gradient
    if (t < 0) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) x[j] = ct_bf(0.0f);
        if (threadIdx.x == 0) losses[blockIdx.x] = 0.0f;
        return;
    }
    ct_msum acc = {-INFINITY, 0.0f};
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float v = ct_ld(x + j);
        if (v > acc.m) {
            acc.s = acc.s * expf(acc.m - v) + 1.0f; // acc.s == 0 while acc.m is -inf: stays finite
            acc.m = v;
        } else {
            acc.s += expf(v - acc.m);
        }
    }
    acc = ct_block_msum(acc, sh);
    // x[t] is read by every thread before the barrier below; no element is written before it
    const float xt = ct_ld(x + t);
    __syncthreads();
    if (threadIdx.x == 0) losses[blockIdx.x] = logf(acc.s) - (xt - acc.m);
    const float w = dloss / acc.s;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float p = expf(ct_ld(x + j) - acc.m) * w;
        x[j] = ct_bf(j == t ? p - dloss : p);
    }
}

void ct_cuda_xent(ct_kctx *ctx, float *losses, void *logits, const int32_t *targets, float dloss, int N, int V,
                  int ld)
{
    if (N <= 0 || V <= 0) return;
    xent_kernel<<<N, XENT_THREADS, 0, ctx->stream>>>(losses, (bf16 *)logits, targets, dloss, V, ld);
    CT_LAUNCH_CHECK(ctx);
}
