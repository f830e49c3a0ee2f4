// swiglu.cu — SwiGLU (Llama's MLP) on CUDA: out = silu(gate) * up, silu(x) = x * sigmoid(x),
// sigmoid(x) = 1 / (1 + exp(-x)) with full-precision expf: exp(-x) = inf for x < -88 gives
// sigmoid 0 and silu -0, never NaN. Eight elements per thread per step with 16-byte accesses
// where every pointer allows (VEC), one at a time otherwise and for the tail: the same
// arithmetic either way (forward through common.cuh's ct_map2, backward as gelu.cu's).
#include "swiglu.cuh"

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <bool VEC> __global__ void swiglu_fwd_kernel(bf16 *out, const bf16 *gate, const bf16 *up, size_t n)
{
    ct_map2<VEC>(out, gate, up, n, [](float g, float u) { return g * sigmoid(g) * u; });
}

// dgate += dout * up * silu'(gate), silu'(x) = s (1 + x (1 - s)); dup += dout * silu(gate).
// Each thread reads all its inputs before writing, so either gradient may share memory with
// dout.
__device__ __forceinline__ void swiglu_grad(float g, float u, float d, float &dg, float &du)
{
    const float s = sigmoid(g);
    dg += d * u * (s * (1.0f + g * (1.0f - s)));
    du += d * g * s;
}

template <bool VEC>
__global__ void swiglu_bwd_kernel(bf16 *dgate, bf16 *dup, const bf16 *dout, const bf16 *gate, const bf16 *up, size_t n)
{
    const size_t stride = (size_t)gridDim.x * blockDim.x, t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t head = 0;
    if (VEC) {
        head = n / 8 * 8;
        for (size_t i = t * 8; i < head; i += stride * 8) {
            float g[8], u[8], d[8], dg[8], du[8];
            ct_ld8(g, gate + i);
            ct_ld8(u, up + i);
            ct_ld8(d, dout + i);
            ct_ld8(dg, dgate + i);
            ct_ld8(du, dup + i);
#pragma unroll
            for (int k = 0; k < 8; k++) swiglu_grad(g[k], u[k], d[k], dg[k], du[k]);
            ct_st8(dgate + i, dg);
            ct_st8(dup + i, du);
        }
    }
    for (size_t i = head + t; i < n; i += stride) {
        float dg = ct_ld(dgate + i), du = ct_ld(dup + i);
        swiglu_grad(ct_ld(gate + i), ct_ld(up + i), ct_ld(dout + i), dg, du);
        dgate[i] = ct_bf(dg);
        dup[i] = ct_bf(du);
    }
}

void ct_cuda_swiglu_fwd(ct_kctx *ctx, void *out, const void *gate, const void *up, size_t n)
{
    if (n == 0) return;
    ct_launch_map(ctx, swiglu_fwd_kernel<true>, swiglu_fwd_kernel<false>,
                  ct_aligned16(out) && ct_aligned16(gate) && ct_aligned16(up), n, (bf16 *)out, (const bf16 *)gate,
                  (const bf16 *)up, n);
}

void ct_cuda_swiglu_bwd(ct_kctx *ctx, void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                        size_t n)
{
    if (n == 0) return;
    const int aligned = ct_aligned16(dgate) && ct_aligned16(dup) && ct_aligned16(dout) && ct_aligned16(gate) &&
                        ct_aligned16(up);
    ct_launch_map(ctx, swiglu_bwd_kernel<true>, swiglu_bwd_kernel<false>, aligned, n, (bf16 *)dgate, (bf16 *)dup,
                  (const bf16 *)dout, (const bf16 *)gate, (const bf16 *)up, n);
}
