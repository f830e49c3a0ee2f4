/* xent.c — fused softmax + cross-entropy over V classes, fp32 on the CPU.
 *
 * Forward: each row of logits[N,V] becomes its softmax in place and losses[i] =
 * logsumexp(row) - row[target] (0 for ignored rows, target < 0; their row still becomes
 * a softmax, so probabilities are valid for every row). targets may be NULL: every row
 * ignored, which leaves plain softmax.
 * Backward overwrites probs with (probs - onehot(target)) * dloss, zero rows where ignored.
 * Rows are independent: OpenMP over rows, deterministic for any thread count. */
#include <math.h>
#include <string.h>

#include "cpu.h"

/* exp(x) for x <= 0, within 1 ulp, 0 below -87.3; vectorisable (as in attention.c). */
static inline float exp_small(float x)
{
    const float lo = -87.33654f;
    float xc = x < lo ? lo : x;
    float fn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    int n = (int)fn;
    float r = xc - fn * 0.693359375f;
    r = r - fn * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * (r * r) + r + 1.0f;
    union { int32_t i; float f; } s = { .i = (n + 127) << 23 };
    return x < lo ? 0.0f : y * s.f;
}

/* Maximum is exact in any order, so an OpenMP simd reduction is safe here. */
static float max_f32(const float *x, int n)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* x[i] = exp(x[i] - mx) in place; returns the sum in double over 8 fixed lanes (bits
 * independent of the data's address, and accurate over V ~ 50k terms). Two passes: the
 * exp loop vectorises only on its own. */
static double exp_sum(float *x, int n, float mx)
{
    for (int i = 0; i < n; i++) x[i] = exp_small(x[i] - mx);
    double acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += x[i + j];
    for (; i < n; i++) acc[i & 7] += x[i];
    double s = 0.0;
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

void ct_cpu_xent_fwd(ct_kctx *ctx, float *losses, void *logits, const int32_t *targets, int N, int V)
{
    float *lg = logits;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *x = lg + (size_t)i * V;
        const int t = targets ? targets[i] : -1;
        const float mx = max_f32(x, V);
        const float xt = t >= 0 ? x[t] : mx; /* read before x becomes probabilities */
        const double sum = exp_sum(x, V, mx);
        /* loss from logsumexp, not log(prob): accurate even when prob underflows */
        losses[i] = t >= 0 ? (float)(log(sum) - ((double)xt - (double)mx)) : 0.0f;
        const float inv = (float)(1.0 / sum);
        for (int j = 0; j < V; j++) x[j] *= inv;
    }
}

void ct_cpu_xent_bwd(ct_kctx *ctx, void *probs, const int32_t *targets, float dloss, int N, int V)
{
    float *pr = probs;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *x = pr + (size_t)i * V;
        const int t = targets ? targets[i] : -1;
        if (t < 0) {
            memset(x, 0, (size_t)V * sizeof(float));
            continue;
        }
        const float pt = x[t];
        for (int j = 0; j < V; j++) x[j] *= dloss;
        x[t] = (pt - 1.0f) * dloss;
    }
}
