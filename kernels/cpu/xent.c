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
#include "vmath.h"

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
    for (int i = 0; i < n; i++) x[i] = ct_vexpf(x[i] - mx);
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
