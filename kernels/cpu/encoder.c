/* encoder.c — input embedding on the CPU: token embedding plus position embedding,
 * out[b,t,:] = wte[tokens[b,t],:] + wpe[pos[b,t],:] (GPT-2; pos NULL: t), or the token
 * embedding alone when wpe is NULL (Llama: positions enter through RoPE), and its backward
 * (scatter-adds into dwte and dwpe).
 * Token ids are trusted to lie in [0, V): the op is not given V and cannot check them. */
#include <string.h>

#include "cpu.h"

/* Below this many output elements a parallel region costs more than it saves. */
#define ENC_PAR_MIN 16384

void ct_cpu_encoder_fwd(ct_kctx *ctx, void *out_, const int32_t *tokens, const int32_t *pos, const void *wte_,
                        const void *wpe_, int B, int T, int C)
{
    float *out = out_;
    const float *wte = wte_, *wpe = wpe_;
    long rows = (long)B * T;
#pragma omp parallel for schedule(static) if (rows * C >= ENC_PAR_MIN)
    for (long bt = 0; bt < rows; bt++) {
        float *o = out + bt * C;
        const float *te = wte + (size_t)tokens[bt] * C;
        if (!wpe) {
            memcpy(o, te, (size_t)C * sizeof(float));
            continue;
        }
        const float *pe = wpe + (size_t)(pos ? pos[bt] : bt % T) * C;
        for (int c = 0; c < C; c++) o[c] = te[c] + pe[c];
    }
}

/* dwpe[p,:] += sum over the (b,t) at position p of dout[b,t,:]; dwte[v,:] += sum over the
 * (b,t) holding token v of dout[b,t,:]. The scatters are made race-free by splitting channels,
 * not positions: each thread owns a slice of channels and walks every (b,t) in order, so each
 * element of dwte and dwpe is summed by one thread in ascending (b,t) order (for dwpe with
 * pos NULL: b ascending at each t, the same order) — bit-identical for any thread count, with
 * no atomics and no scratch memory. Either gradient may be NULL (a frozen embedding); with
 * both NULL there is nothing to do. */
void ct_cpu_encoder_bwd(ct_kctx *ctx, void *dwte_, void *dwpe_, const void *dout_, const int32_t *tokens,
                        const int32_t *pos, int B, int T, int C)
{
    float *dwte = dwte_, *dwpe = dwpe_;
    const float *dout = dout_;
    long rows = (long)B * T;
    if (!dwte && !dwpe) return;
    int w = ct_cpu_channel_slice(C, 0); /* one slice per thread */
#pragma omp parallel for schedule(static) if (rows * C >= ENC_PAR_MIN)
    for (int c0 = 0; c0 < C; c0 += w) {
        int n = C - c0 < w ? C - c0 : w;
        if (dwpe && pos)
            for (long bt = 0; bt < rows; bt++) {
                float *dp = dwpe + (size_t)pos[bt] * C + c0;
                const float *d = dout + (size_t)bt * C + c0;
                for (int c = 0; c < n; c++) dp[c] += d[c];
            }
        else if (dwpe)
            for (int t = 0; t < T; t++) {
                float *dp = dwpe + (size_t)t * C + c0;
                for (int b = 0; b < B; b++) {
                    const float *d = dout + ((size_t)b * T + t) * C + c0;
                    for (int c = 0; c < n; c++) dp[c] += d[c];
                }
            }
        if (dwte)
            for (long bt = 0; bt < rows; bt++) {
                float *dt = dwte + (size_t)tokens[bt] * C + c0;
                const float *d = dout + (size_t)bt * C + c0;
                for (int c = 0; c < n; c++) dt[c] += d[c];
            }
    }
}
