/* gelu.c — GELU in GPT-2's tanh form (HF "gelu_new") on the CPU, forward and backward:
 *   gelu(x) = 0.5 * x * (1 + tanh(u)),   u = sqrt(2/pi) * (x + 0.044715 * x^3)
 * computed through the identity 0.5 * (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + exp(-2u)).
 * That form needs only exp, which is written out below so that loops vectorise: without
 * -ffast-math, glibc's tanhf/expf are scalar calls. It is also more accurate than
 * 1 + tanhf(u) for negative x, where the latter cancels. */
#include <stdint.h>
#include <string.h>

#include "cpu.h"
#include "vmath.h"

#define GELU_PAR_MIN 32768 /* below this many elements a parallel region costs more than it saves */
#define GELU_S 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_K 0.044715f

/* Beyond |x| = 10 nothing needs evaluating: sig(2u) rounds to 1 for x > 10 (gelu = x,
 * slope 1) and gelu is below 1e-37 for x < -10 (taken as 0, slope 0). Evaluating sig at x
 * clamped to [-10, 10] keeps x^3 and exp finite, so huge inputs give x or 0, never
 * inf * 0 = NaN, while x * sig still propagates a NaN input. Inside [-10, 10], |2u| < 87.4.
 * A single select after the arithmetic: nested selects led GCC to duplicate the arithmetic
 * per case. */
static inline float gelu_clamp(float x)
{
    x = x < -10.0f ? -10.0f : x;
    return x > 10.0f ? 10.0f : x;
}

void ct_cpu_gelu_fwd(ct_kctx *ctx, void *out_, const void *inp_, size_t n)
{
    float *out = out_;
    const float *inp = inp_;
    /* "parallel :" matters: a bare if() on a combined construct also switches off simd */
#pragma omp parallel for simd schedule(static) if (parallel : n >= GELU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float xc = gelu_clamp(x);
        float u = GELU_S * (xc + GELU_K * xc * xc * xc);
        float y = x / (1.0f + ct_vexpf(-2.0f * u));
        out[i] = x < -10.0f ? 0.0f : y;
    }
}

/* d/dx [x * sig(2u)] = sig + 2 x sig (1 - sig) du/dx,  du/dx = sqrt(2/pi) (1 + 3*0.044715 x^2);
 * with e = exp(-2u): sig = 1/(1+e), 1 - sig = e * sig (no cancellation). This equals the
 * tanh-form derivative 0.5(1 + tanh u) + 0.5 x sech^2(u) du/dx. At the clamp x = 10 the
 * second term is ~1e-36, so the slope is exactly 1 above it. */
void ct_cpu_gelu_bwd(ct_kctx *ctx, void *dinp_, const void *inp_, const void *dout_, size_t n)
{
    float *dinp = dinp_;
    const float *inp = inp_, *dout = dout_;
#pragma omp parallel for simd schedule(static) if (parallel : n >= GELU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float xc = gelu_clamp(x);
        float x2 = xc * xc;
        float u = GELU_S * (xc + GELU_K * x2 * xc);
        float e = ct_vexpf(-2.0f * u);
        float sig = 1.0f / (1.0f + e);
        float du = GELU_S * (1.0f + 3.0f * GELU_K * x2);
        float g = sig + 2.0f * xc * du * (sig * (e * sig));
        g = x < -10.0f ? 0.0f : g;
        dinp[i] += g * dout[i];
    }
}
