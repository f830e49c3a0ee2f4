// adamw.cu — AdamW on CUDA, the operation order of kernels/cpu/adamw.c (torch.optim.AdamW's
// single-tensor path) with every product and sum rounded separately (__fmul_rn/__fadd_rn: no
// FMA contraction, as the CPU build compiles ISO C without it), so master, m and v match the
// CPU's bits given the same gradient values. Scalars are formed on the host in double, then
// rounded to float, exactly as on the CPU. param (bf16) receives round-to-nearest(master).
#include <math.h>

#include "adamw.cuh"

struct adamw_scalars {
    float gs, w1, b2f, w2, bc2_sqrt, eps, decay, neg_step;
    int small; // ATen's lerp form: m + w (g - m) for |w| < 0.5, else g - (g - m)(1 - w)
};

__global__ void adamw_kernel(float *master, bf16 *param, float *m, float *v, const bf16 *grad, size_t n,
                             adamw_scalars s)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = __fmul_rn(ct_ld(grad + i), s.gs);
        const float m0 = m[i];
        const float mi = s.small ? __fadd_rn(m0, __fmul_rn(s.w1, __fsub_rn(g, m0)))
                                 : __fsub_rn(g, __fmul_rn(__fsub_rn(g, m0), __fsub_rn(1.0f, s.w1)));
        const float vi = __fadd_rn(__fmul_rn(v[i], s.b2f), __fmul_rn(__fmul_rn(s.w2, g), g));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
        const float x = __fmul_rn(master[i], s.decay);
        const float xn = __fadd_rn(x, __fdiv_rn(__fmul_rn(s.neg_step, mi), denom));
        m[i] = mi;
        v[i] = vi;
        master[i] = xn;
        param[i] = ct_bf(xn);
    }
}

void ct_cuda_adamw(ct_kctx *ctx, float *master, void *param, float *m, float *v, const void *grad, size_t n,
                   const ct_adamw_params *p)
{
    if (n == 0) return;
    const double lr = p->lr, b1 = p->beta1, b2 = p->beta2;
    adamw_scalars s;
    s.decay = (float)(1.0 - lr * (double)p->weight_decay);
    s.w1 = (float)(1.0 - b1);
    s.b2f = (float)b2;
    s.w2 = (float)(1.0 - b2);
    s.bc2_sqrt = (float)sqrt(1.0 - pow(b2, p->step));
    s.neg_step = (float)(-(lr / (1.0 - pow(b1, p->step))));
    s.eps = p->eps;
    s.gs = p->grad_scale;
    s.small = fabsf(s.w1) < 0.5f;
    adamw_kernel<<<ct_blocks(n, 256), 256, 0, ctx->stream>>>(master, (bf16 *)param, m, v, (const bf16 *)grad, n, s);
    CT_LAUNCH_CHECK(ctx);
}
