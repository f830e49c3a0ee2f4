/* xent.c — TODO (placeholder while being written) */
#include <stdlib.h>
#include "cpu.h"

void ct_cpu_xent_fwd(ct_kctx *ctx, float *losses, void *logits, const int32_t *targets, int N, int V)
{
    abort();
}

void ct_cpu_xent_bwd(ct_kctx *ctx, void *probs, const int32_t *targets, float dloss, int N, int V)
{
    abort();
}
