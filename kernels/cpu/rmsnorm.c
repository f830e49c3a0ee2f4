/* rmsnorm.c — RMSNorm over the last axis on the CPU (Llama), forward and backward, fp32.
 * Matches Hugging Face's LlamaRMSNorm in fp32:
 *   rstd = 1 / sqrt(mean(x^2) + eps),   out = (x * rstd) * w
 * with the mean of squares summed in float as torch does (over fixed lanes in a fixed
 * order here, so results depend neither on the thread count nor on vectorisation). */
#include <math.h>

#include "cpu.h"
#include "vmath.h"

#define RMS_PAR_MIN 16384  /* below this many elements a parallel region costs more than it saves */
#define RMS_SLICE_MAX 256  /* channels per slice of the dw reduction (stack accumulators) */

void ct_cpu_rmsnorm_fwd(ct_kctx *ctx, void *out_, float *rstd, const void *inp_, const void *w_, int N, int C,
                        float eps)
{
    float *out = out_;
    const float *inp = inp_, *w = w_;
#pragma omp parallel for schedule(static) if ((long)N * C >= RMS_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        /* torch: hidden * rsqrt(pow(2).mean(-1) + eps), rsqrt as 1/sqrt; then weight * that */
        const float s = 1.0f / sqrtf(ct_vdot(x, x, C) / (float)C + eps);
        for (int c = 0; c < C; c++) o[c] = (x[c] * s) * w[c];
        rstd[n] = s;
    }
}

/* With xhat = x * rstd and g = w * dout, per row (d rstd / dx_j = -rstd^3 x_j / C):
 *   dinp += rstd * (g - xhat * mean(g * xhat))
 * and per channel dw += sum_n dout * xhat. As in layernorm.c, the channel pass runs over
 * channel slices, each summed over all rows in order by one thread, then the row pass over
 * rows (after the barrier, so dinp may share memory with dout or inp). */
void ct_cpu_rmsnorm_bwd(ct_kctx *ctx, void *dinp_, void *dw_, const void *dout_, const void *inp_, const void *w_,
                        const float *rstd, int N, int C)
{
    float *dinp = dinp_, *dw = dw_;
    const float *dout = dout_, *inp = inp_, *w = w_;
    const int slice = ct_cpu_channel_slice(C, RMS_SLICE_MAX);

#pragma omp parallel if ((long)N * C >= RMS_PAR_MIN)
    {
        /* dw is the same pointer in every thread: all of the team meets this loop or none */
        if (dw) {
#pragma omp for schedule(static)
            for (int c0 = 0; c0 < C; c0 += slice) {
                const int k = C - c0 < slice ? C - c0 : slice;
                float aw[RMS_SLICE_MAX] = {0};
                for (int n = 0; n < N; n++) {
                    const float *x = inp + (size_t)n * C + c0, *d = dout + (size_t)n * C + c0;
                    const float s = rstd[n];
                    for (int c = 0; c < k; c++) aw[c] += d[c] * (x[c] * s);
                }
                for (int c = 0; c < k; c++) dw[c0 + c] += aw[c];
            }
        }

#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *d = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            const float s = rstd[n];
            float acc[16] = {0}; /* sum of g * x over fixed lanes (ct_vdot's order, g formed on the fly) */
            int i = 0;
            for (; i + 16 <= C; i += 16)
                for (int j = 0; j < 16; j++) acc[j] += (w[i + j] * d[i + j]) * x[i + j];
            for (; i < C; i++) acc[i & 15] += (w[i] * d[i]) * x[i];
            float gx = 0.0f;
            for (int j = 0; j < 16; j++) gx += acc[j];
            /* mean(g * xhat) * xhat = (gx * s / C) * x * s */
            const float k = gx * s * s / (float)C;
            for (int c = 0; c < C; c++) dx[c] += s * (w[c] * d[c] - k * x[c]);
        }
    }
}
