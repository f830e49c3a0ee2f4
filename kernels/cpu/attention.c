/* attention.c — TODO (placeholder while being written) */
#include <stdlib.h>
#include "cpu.h"

size_t ct_cpu_attention_stats_len(int B, int T, int NH)
{
    abort();
}

void ct_cpu_attention_fwd(ct_kctx *ctx, void *out, float *stats, const void *qkv, int B, int T, int C, int NH)
{
    abort();
}

void ct_cpu_attention_bwd(ct_kctx *ctx, void *dqkv, float *stats, const void *dout, const void *qkv,
                          const void *out, int B, int T, int C, int NH)
{
    abort();
}
