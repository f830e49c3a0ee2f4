/* encoder.c — TODO (placeholder while being written) */
#include <stdlib.h>
#include "cpu.h"

void ct_cpu_encoder_fwd(ct_kctx *ctx, void *out, const int32_t *tokens, const void *wte, const void *wpe,
                        int B, int T, int C)
{
    abort();
}

void ct_cpu_encoder_bwd(ct_kctx *ctx, void *dwte, void *dwpe, const void *dout, const int32_t *tokens,
                        int B, int T, int C)
{
    abort();
}
