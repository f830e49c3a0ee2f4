/* layernorm.c — LayerNorm over the last axis on the CPU, forward and backward, fp32 storage.
 * Matches torch.nn.LayerNorm: biased variance, eps inside the square root.
 *   out = (inp - mean) * rstd * w + b,   rstd = 1 / sqrt(var + eps)
 * Row sums use a fixed set of lanes combined in a fixed order, so results depend neither on
 * the thread count nor on how the compiler vectorises. */
#include <math.h>

#include "cpu.h"

/* Below this many elements a parallel region costs more than it saves. */
#define LN_PAR_MIN 16384
#define LN_LANES 16    /* independent partial sums per row reduction: vectorisable, fixed order */
#define LN_SLICE_MAX 256 /* channels per slice of the dw/db reduction (stack accumulators) */

/* sum of x[0..n), accumulated in double: the mean stays accurate for rows far from 0 */
static double row_sum_d(const float *x, int n)
{
    double acc[LN_LANES] = {0};
    int i = 0;
    for (; i + LN_LANES <= n; i += LN_LANES)
        for (int j = 0; j < LN_LANES; j++) acc[j] += x[i + j];
    double s = 0;
    for (; i < n; i++) s += x[i];
    for (int j = 0; j < LN_LANES; j++) s += acc[j];
    return s;
}

/* sum of (x[i] - m)^2, in double */
static double row_sqdev_d(const float *x, int n, double m)
{
    double acc[LN_LANES] = {0};
    int i = 0;
    for (; i + LN_LANES <= n; i += LN_LANES)
        for (int j = 0; j < LN_LANES; j++) {
            double d = x[i + j] - m;
            acc[j] += d * d;
        }
    double s = 0;
    for (; i < n; i++) s += (x[i] - m) * (x[i] - m);
    for (int j = 0; j < LN_LANES; j++) s += acc[j];
    return s;
}

void ct_cpu_layernorm_fwd(ct_kctx *ctx, void *out_, float *mean, float *rstd, const void *inp_, const void *w_,
                          const void *b_, int N, int C, float eps)
{
    float *out = out_;
    const float *inp = inp_, *w = w_, *b = b_;
#pragma omp parallel for schedule(static) if ((long)N * C >= LN_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        /* two passes: the variance of (x - mean) avoids E[x^2] - E[x]^2 cancellation */
        double m = row_sum_d(x, C) / C;
        double var = row_sqdev_d(x, C, m) / C;
        float s = (float)(1.0 / sqrt(var + eps));
        float mf = (float)m;
        for (int c = 0; c < C; c++) o[c] = (x[c] - mf) * s * w[c] + b[c];
        mean[n] = mf;
        rstd[n] = s;
    }
}

/* With xhat = (x - mean) * rstd and g = w * dout, per row:
 *   dinp += rstd * (g - mean(g) - xhat * mean(g * xhat))
 * and per channel: dw += sum_n dout * xhat, db += sum_n dout.
 * The channel pass parallelises over channel slices, each summed over all rows in order by
 * one thread (deterministic, no atomics, no scratch memory); the row pass over rows.
 * dw and db may be NULL (a frozen model under LoRA); with both NULL the channel pass is skipped. */
void ct_cpu_layernorm_bwd(ct_kctx *ctx, void *dinp_, void *dw_, void *db_, const void *dout_, const void *inp_,
                          const void *w_, const float *mean, const float *rstd, int N, int C)
{
    float *dinp = dinp_, *dw = dw_, *db = db_;
    const float *dout = dout_, *inp = inp_, *w = w_;
    const int slice = ct_cpu_channel_slice(C, LN_SLICE_MAX);

#pragma omp parallel if ((long)N * C >= LN_PAR_MIN)
    {
        /* channel pass first, then (after the implicit barrier) the row pass: dinp may
         * then share memory with dout or inp. (dw || db) is the same in every thread, so
         * either all of the team meets this worksharing loop or none does. */
        if (dw || db) {
#pragma omp for schedule(static)
            for (int c0 = 0; c0 < C; c0 += slice) {
                int k = C - c0 < slice ? C - c0 : slice;
                float aw[LN_SLICE_MAX] = {0}, ab[LN_SLICE_MAX] = {0};
                for (int n = 0; n < N; n++) {
                    const float *x = inp + (size_t)n * C + c0;
                    const float *d = dout + (size_t)n * C + c0;
                    float m = mean[n], s = rstd[n];
                    for (int c = 0; c < k; c++) {
                        aw[c] += d[c] * ((x[c] - m) * s);
                        ab[c] += d[c];
                    }
                }
                if (dw)
                    for (int c = 0; c < k; c++) dw[c0 + c] += aw[c];
                if (db)
                    for (int c = 0; c < k; c++) db[c0 + c] += ab[c];
            }
        }

#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            const float *d = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            float m = mean[n], s = rstd[n];
            float a1[LN_LANES] = {0}, a2[LN_LANES] = {0};
            int i = 0;
            for (; i + LN_LANES <= C; i += LN_LANES)
                for (int j = 0; j < LN_LANES; j++) {
                    float g = w[i + j] * d[i + j];
                    a1[j] += g;
                    a2[j] += g * ((x[i + j] - m) * s);
                }
            float sg = 0, sgx = 0;
            for (; i < C; i++) {
                float g = w[i] * d[i];
                sg += g;
                sgx += g * ((x[i] - m) * s);
            }
            for (int j = 0; j < LN_LANES; j++) { sg += a1[j]; sgx += a2[j]; }
            float mg = sg / C, mgx = sgx / C;
            for (int c = 0; c < C; c++) {
                float xhat = (x[c] - m) * s;
                dx[c] += s * (w[c] * d[c] - mg - xhat * mgx);
            }
        }
    }
}
