/* adamw.c — TODO (placeholder while being written) */
#include <stdlib.h>
#include "cpu.h"

void ct_cpu_adamw(ct_kctx *ctx, float *master, void *param, float *m, float *v, const void *grad, size_t n,
                  const ct_adamw_params *p)
{
    abort();
}
