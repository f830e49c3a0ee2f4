/* sumsq.c — TODO (placeholder while being written) */
#include <stdlib.h>
#include "cpu.h"

double ct_cpu_sumsq(ct_kctx *ctx, const void *g, size_t n)
{
    abort();
}
