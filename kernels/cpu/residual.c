/* residual.c — the residual connection on the CPU: out = a + b, and its backward, which adds
 * dout into both input gradients. */
#include "cpu.h"

#define RES_PAR_MIN 65536 /* below this many elements a parallel region costs more than it saves */

void ct_cpu_residual_fwd(ct_kctx *ctx, void *out_, const void *a_, const void *b_, size_t n)
{
    float *out = out_;
    const float *a = a_, *b = b_;
#pragma omp parallel for simd schedule(static) if (parallel : n >= RES_PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/* No restrict: da may equal db (x + x) or dout; each dout element is read before either
 * gradient is written, so every aliasing case adds dout's original value into both. */
void ct_cpu_residual_bwd(ct_kctx *ctx, void *da_, void *db_, const void *dout_, size_t n)
{
    float *da = da_, *db = db_;
    const float *dout = dout_;
#pragma omp parallel for schedule(static) if (n >= RES_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float d = dout[i];
        da[i] += d;
        db[i] += d;
    }
}
