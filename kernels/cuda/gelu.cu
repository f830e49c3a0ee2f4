// gelu.cu — GELU, tanh form (GPT-2's gelu_new), on CUDA; the same formulas as kernels/cpu/gelu.c:
//   gelu(x) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3), x clamped to [-10, 10] for
// the sigmoid so huge inputs give x or 0, never inf * 0.
// Eight elements per thread per step with 16-byte accesses where every pointer allows (VEC),
// one at a time otherwise and for the tail: the same arithmetic either way.
#include "gelu.cuh"

#define GELU_S 0.7978845608028654f
#define GELU_K 0.044715f

__device__ __forceinline__ float gelu_clamp(float x) { return fminf(fmaxf(x, -10.0f), 10.0f); }

__device__ __forceinline__ float gelu(float x)
{
    const float xc = gelu_clamp(x);
    const float u = GELU_S * (xc + GELU_K * xc * xc * xc);
    const float y = x / (1.0f + expf(-2.0f * u));
    return x < -10.0f ? 0.0f : y;
}

// d gelu / dx = sig + 2 x sig (1 - sig) du/dx, 1 - sig = e * sig with e = exp(-2u)
__device__ __forceinline__ float gelu_grad(float x)
{
    const float xc = gelu_clamp(x), x2 = xc * xc;
    const float u = GELU_S * (xc + GELU_K * x2 * xc);
    const float e = expf(-2.0f * u);
    const float sig = 1.0f / (1.0f + e);
    const float du = GELU_S * (1.0f + 3.0f * GELU_K * x2);
    const float g = sig + 2.0f * xc * du * (sig * (e * sig));
    return x < -10.0f ? 0.0f : g;
}

template <bool VEC> __global__ void gelu_fwd_kernel(bf16 *out, const bf16 *inp, size_t n)
{
    const size_t stride = (size_t)gridDim.x * blockDim.x, t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t head = 0;
    if (VEC) {
        head = n / 8 * 8;
        for (size_t i = t * 8; i < head; i += stride * 8) {
            float x[8];
            ct_ld8(x, inp + i);
#pragma unroll
            for (int k = 0; k < 8; k++) x[k] = gelu(x[k]);
            ct_st8(out + i, x);
        }
    }
    for (size_t i = head + t; i < n; i += stride) out[i] = ct_bf(gelu(ct_ld(inp + i)));
}

// dinp += dout * gelu'(inp); each thread reads its elements before writing them, so dinp may
// share memory with dout
template <bool VEC> __global__ void gelu_bwd_kernel(bf16 *dinp, const bf16 *inp, const bf16 *dout, size_t n)
{
    const size_t stride = (size_t)gridDim.x * blockDim.x, t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t head = 0;
    if (VEC) {
        head = n / 8 * 8;
        for (size_t i = t * 8; i < head; i += stride * 8) {
            float x[8], d[8], g[8];
            ct_ld8(x, inp + i);
            ct_ld8(d, dout + i);
            ct_ld8(g, dinp + i);
#pragma unroll
            for (int k = 0; k < 8; k++) g[k] += gelu_grad(x[k]) * d[k];
            ct_st8(dinp + i, g);
        }
    }
    for (size_t i = head + t; i < n; i += stride)
        dinp[i] = ct_bf(ct_ld(dinp + i) + gelu_grad(ct_ld(inp + i)) * ct_ld(dout + i));
}

void ct_cuda_gelu_fwd(ct_kctx *ctx, void *out, const void *inp, size_t n)
{
    if (n == 0) return;
    ct_launch_map(ctx, gelu_fwd_kernel<true>, gelu_fwd_kernel<false>, ct_aligned16(out) && ct_aligned16(inp), n,
                  (bf16 *)out, (const bf16 *)inp, n);
}

void ct_cuda_gelu_bwd(ct_kctx *ctx, void *dinp, const void *inp, const void *dout, size_t n)
{
    if (n == 0) return;
    ct_launch_map(ctx, gelu_bwd_kernel<true>, gelu_bwd_kernel<false>,
                  ct_aligned16(dinp) && ct_aligned16(inp) && ct_aligned16(dout), n, (bf16 *)dinp, (const bf16 *)inp,
                  (const bf16 *)dout, n);
}
