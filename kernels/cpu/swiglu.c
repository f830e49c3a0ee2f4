/* swiglu.c — SwiGLU (Llama's MLP activation) on the CPU, forward and backward, fp32:
 *   out = silu(gate) * up,   silu(x) = x / (1 + exp(-x))  (torch's form)
 * exp is vmath.h's, so the loops vectorise. Where exp(-x) would overflow (x < -88) it is
 * clamped to exp(88) ~ 1.7e38: silu is then ~1e-36 instead of torch's x / inf = -0, a
 * difference far below anything downstream can see. */
#include "cpu.h"
#include "vmath.h"

#define SWIGLU_PAR_MIN 32768 /* below this many elements a parallel region costs more than it saves */

void ct_cpu_swiglu_fwd(ct_kctx *ctx, void *out_, const void *gate_, const void *up_, size_t n)
{
    float *out = out_;
    const float *gate = gate_, *up = up_;
    /* "parallel :" matters: a bare if() on a combined construct also switches off simd */
#pragma omp parallel for simd schedule(static) if (parallel : n >= SWIGLU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const float x = gate[i];
        out[i] = x / (1.0f + ct_vexpf(-x)) * up[i];
    }
}

/* silu'(x) = sig + x sig (1 - sig), sig = 1 / (1 + e), e = exp(-x); 1 - sig = e * sig
 * avoids the cancellation for large x. No restrict: every input element is read before
 * either gradient is written, so aliasing (dgate == dout, ...) is harmless. */
void ct_cpu_swiglu_bwd(ct_kctx *ctx, void *dgate_, void *dup_, const void *dout_, const void *gate_,
                       const void *up_, size_t n)
{
    float *dgate = dgate_, *dup = dup_;
    const float *dout = dout_, *gate = gate_, *up = up_;
#pragma omp parallel for simd schedule(static) if (parallel : n >= SWIGLU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const float x = gate[i], u = up[i], d = dout[i];
        const float e = ct_vexpf(-x), sig = 1.0f / (1.0f + e);
        /* silu as the forward rounds it: dup is the gradient of the product it formed */
        const float silu = x / (1.0f + e), dsilu = sig + x * (sig * (e * sig));
        dgate[i] += d * u * dsilu;
        dup[i] += d * silu;
    }
}
