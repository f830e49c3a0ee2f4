/* matmul.c — TODO (placeholder while being written) */
#include <stdlib.h>
#include "cpu.h"

void ct_cpu_matmul_fwd(ct_kctx *ctx, void *out, const void *inp, const void *w, const void *bias,
                       int N, int K, int M)
{
    abort();
}

void ct_cpu_matmul_bwd(ct_kctx *ctx, void *dinp, void *dw, void *dbias, const void *dout, const void *inp,
                       const void *w, int N, int K, int M)
{
    abort();
}
