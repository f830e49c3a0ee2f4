/* adamw.c — AdamW update, fp32 on the CPU, mirroring torch.optim.AdamW's single-tensor
 * path operation for operation so results agree to the last bits where possible:
 *   param.mul_(1 - lr*wd)
 *   exp_avg.lerp_(grad, 1 - beta1)
 *   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
 *   denom = exp_avg_sq.sqrt() / sqrt(1 - beta2^step) + eps
 *   param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1^step))
 * Scalars are formed in double as Python does, then rounded to float as ATen does.
 * The gradient is first multiplied by grad_scale. Elementwise: OpenMP, deterministic. */
#include <math.h>

#include "cpu.h"

/* The per-element update; `small` is a constant at each call site so each loop is
 * branch-free and vectorises. */
static inline void adamw_one(float *master, float *param, float *m, float *v, const float *grad, long long i,
                             float gs, float w1, float b2f, float w2, float bc2_sqrt, float eps, float decay,
                             float neg_step, int small)
{
    const float g = grad[i] * gs;
    const float m0 = m[i];
    const float mi = small ? m0 + w1 * (g - m0) : g - (g - m0) * (1.0f - w1);
    const float vi = v[i] * b2f + w2 * g * g;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    const float x = master[i] * decay;
    const float xn = x + neg_step * mi / denom;
    m[i] = mi;
    v[i] = vi;
    master[i] = xn;
    param[i] = xn; /* may alias master: same value either way */
}

void ct_cpu_adamw(ct_kctx *ctx, float *master, void *param_, float *m, float *v, const void *grad_, size_t n,
                  const ct_adamw_params *p)
{
    float *param = param_;
    const float *grad = grad_;
    const double lr = p->lr, b1 = p->beta1, b2 = p->beta2;
    const float decay = (float)(1.0 - lr * (double)p->weight_decay);
    const float w1 = (float)(1.0 - b1); /* lerp weight */
    const float b2f = (float)b2, w2 = (float)(1.0 - b2);
    const float bc2_sqrt = (float)sqrt(1.0 - pow(b2, p->step));
    const float neg_step = (float)(-(lr / (1.0 - pow(b1, p->step))));
    const float eps = p->eps, gs = p->grad_scale;
    const long long nn = (long long)n;

    if (fabsf(w1) < 0.5f) { /* ATen's lerp switches form at weight 0.5 */
#pragma omp parallel for schedule(static) if (nn > 32768)
        for (long long i = 0; i < nn; i++)
            adamw_one(master, param, m, v, grad, i, gs, w1, b2f, w2, bc2_sqrt, eps, decay, neg_step, 1);
    } else {
#pragma omp parallel for schedule(static) if (nn > 32768)
        for (long long i = 0; i < nn; i++)
            adamw_one(master, param, m, v, grad, i, gs, w1, b2f, w2, bc2_sqrt, eps, decay, neg_step, 0);
    }
}
