/* residual.c — TODO (placeholder while being written) */
#include <stdlib.h>
#include "cpu.h"

void ct_cpu_residual_fwd(ct_kctx *ctx, void *out, const void *a, const void *b, size_t n)
{
    abort();
}

void ct_cpu_residual_bwd(ct_kctx *ctx, void *da, void *db, const void *dout, size_t n)
{
    abort();
}
