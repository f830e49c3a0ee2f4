/* gelu.c — TODO (placeholder while being written) */
#include <stdlib.h>
#include "cpu.h"

void ct_cpu_gelu_fwd(ct_kctx *ctx, void *out, const void *inp, size_t n)
{
    abort();
}

void ct_cpu_gelu_bwd(ct_kctx *ctx, void *dinp, const void *inp, const void *dout, size_t n)
{
    abort();
}
