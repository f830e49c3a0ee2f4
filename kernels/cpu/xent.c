/* xent.c — the classifier's loss and its gradient in one pass, fp32 on the CPU.
 *
 * Per row of logits (N rows, ld apart, V classes): losses[i] = logsumexp(row) - row[target],
 * and the row becomes (softmax - onehot(target)) * dloss; ignored rows (target < 0, or targets
 * NULL) get loss 0 and a zero gradient, and so do the padding columns [V, ld). Rows are independent: OpenMP over rows, deterministic for any
 * thread count. */
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

void ct_cpu_xent(ct_kctx *ctx, float *losses, void *logits, const int32_t *targets, float dloss, int N, int V,
                 int ld)
{
    float *lg = logits;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *x = lg + (size_t)i * ld;
        const int t = targets ? targets[i] : -1;
        memset(x + V, 0, (size_t)(ld - V) * sizeof(float)); /* padding: no gradient */
        if (t < 0) { /* ignored: no loss, no gradient */
            losses[i] = 0.0f;
            memset(x, 0, (size_t)V * sizeof(float));
            continue;
        }
        const float mx = max_f32(x, V);
        const float xt = x[t]; /* read before x is overwritten */
        const double sum = exp_sum(x, V, mx);
        /* loss from logsumexp, not log(prob): accurate even when prob underflows */
        losses[i] = (float)(log(sum) - ((double)xt - (double)mx));
        const float w = (float)(dloss / sum); /* softmax * dloss in one multiply */
        for (int j = 0; j < V; j++) x[j] *= w;
        x[t] -= dloss;
    }
}
