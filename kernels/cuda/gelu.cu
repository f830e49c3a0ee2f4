// gelu.cu — GELU, tanh form (GPT-2's gelu_new), on CUDA; the same formulas as kernels/cpu/gelu.c:
//   gelu(x) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3), x clamped to [-10, 10] for
// the sigmoid so huge inputs give x or 0, never inf * 0.
#include "gelu.cuh"

#define GELU_S 0.7978845608028654f
#define GELU_K 0.044715f

__device__ __forceinline__ float gelu_clamp(float x) { return fminf(fmaxf(x, -10.0f), 10.0f); }

__global__ void gelu_fwd_kernel(bf16 *out, const bf16 *inp, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = ct_ld(inp + i), xc = gelu_clamp(x);
        float u = GELU_S * (xc + GELU_K * xc * xc * xc);
        float y = x / (1.0f + expf(-2.0f * u));
        out[i] = ct_bf(x < -10.0f ? 0.0f : y);
    }
}

// dinp += dout * (sig + 2 x sig (1 - sig) du/dx), 1 - sig = e * sig with e = exp(-2u)
__global__ void gelu_bwd_kernel(bf16 *dinp, const bf16 *inp, const bf16 *dout, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = ct_ld(inp + i), xc = gelu_clamp(x), x2 = xc * xc;
        float u = GELU_S * (xc + GELU_K * x2 * xc);
        float e = expf(-2.0f * u);
        float sig = 1.0f / (1.0f + e);
        float du = GELU_S * (1.0f + 3.0f * GELU_K * x2);
        float g = sig + 2.0f * xc * du * (sig * (e * sig));
        g = x < -10.0f ? 0.0f : g;
        float d = ct_ld(dout + i);
        dinp[i] = ct_bf(ct_ld(dinp + i) + g * d);
    }
}

void ct_cuda_gelu_fwd(ct_kctx *ctx, void *out, const void *inp, size_t n)
{
    if (n == 0) return;
    gelu_fwd_kernel<<<ct_blocks(n, 256), 256, 0, ctx->stream>>>((bf16 *)out, (const bf16 *)inp, n);
    CT_LAUNCH_CHECK(ctx);
}

void ct_cuda_gelu_bwd(ct_kctx *ctx, void *dinp, const void *inp, const void *dout, size_t n)
{
    if (n == 0) return;
    gelu_bwd_kernel<<<ct_blocks(n, 256), 256, 0, ctx->stream>>>((bf16 *)dinp, (const bf16 *)inp,
                                                                 (const bf16 *)dout, n);
    CT_LAUNCH_CHECK(ctx);
}
