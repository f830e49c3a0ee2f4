/* rope.c — rotary position embedding in place on the CPU (Llama), rotate_half layout:
 * channel i of a head pairs with i + D/2. For row n and i < D/2, a = pos[n] * inv_freq[i]:
 *   forward   x[i] <- x[i] cos a - x[i+D/2] sin a,   x[i+D/2] <- x[i+D/2] cos a + x[i] sin a
 *   backward  the transpose, a rotation by -a.
 * As Hugging Face computes it in fp32: the angle is one fp32 product (its freqs matmul has
 * an inner dimension of 1), cos and sin are taken of that float, and out = x*cos +
 * rotate_half(x)*sin is rounded per operation (the build is ISO C, so GCC does not
 * contract these into fused multiply-adds). torch's vectorised cos/sin (SLEEF, 1 ulp) may
 * differ from libm's in the last bit.
 *
 * cos and sin depend on the row and the pair only, not on the head: they are computed once
 * per row (a chunk of pairs at a time, on the stack) and applied to all nh heads. */
#include <math.h>

#include "cpu.h"

#define ROPE_CH 64             /* pairs per chunk of cos/sin */
#define ROPE_PAR_MIN (1L << 14) /* below this many elements a parallel region costs more */

/* sign = +1: forward, -1: backward (sin a -> -sin a; exact, so the transpose is exact too) */
static void rope_apply(float *x, const int32_t *pos, const float *inv_freq, int N, int nh, int D, int ld,
                       float sign)
{
    const int half = D / 2;
#pragma omp parallel for schedule(static) if ((long)N * nh * D >= ROPE_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float p = (float)pos[n];
        float cs[ROPE_CH], sn[ROPE_CH];
        for (int i0 = 0; i0 < half; i0 += ROPE_CH) {
            const int m = half - i0 < ROPE_CH ? half - i0 : ROPE_CH;
            for (int i = 0; i < m; i++) {
                const float a = p * inv_freq[i0 + i];
                cs[i] = cosf(a);
                sn[i] = sign * sinf(a);
            }
            for (int h = 0; h < nh; h++) {
                float *x1 = x + (size_t)n * ld + (size_t)h * D + i0, *x2 = x1 + half;
                for (int i = 0; i < m; i++) {
                    const float a1 = x1[i], a2 = x2[i];
                    x1[i] = a1 * cs[i] - a2 * sn[i];
                    x2[i] = a2 * cs[i] + a1 * sn[i];
                }
            }
        }
    }
}

void ct_cpu_rope_fwd(ct_kctx *ctx, void *x, const int32_t *pos, const float *inv_freq, int N, int nh, int D, int ld)
{
    rope_apply(x, pos, inv_freq, N, nh, D, ld, 1.0f);
}

void ct_cpu_rope_bwd(ct_kctx *ctx, void *dx, const int32_t *pos, const float *inv_freq, int N, int nh, int D, int ld)
{
    rope_apply(dx, pos, inv_freq, N, nh, D, ld, -1.0f);
}
