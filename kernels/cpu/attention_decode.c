/* attention_decode.c — attention over a KV cache for sampling, fp32 on the CPU, and the
 * row copy that appends to the cache.
 *
 * Query i of sequence b sits at position p = pos0 + i and attends to cache rows
 * lo(p) .. p of kc/vc [B, maxT, NKV*D], lo(p) = window ? max(0, p - window + 1) : 0, with
 * attention_fwd's head rule (query head h reads kv head h / (NH / NKV)) and scale.
 * Rows past p are never read: the cache may hold anything there.
 *
 * The op gets no scratch memory, so keys go in chunks of KCH through a stack buffer with
 * the streaming ("online") softmax: each chunk's scores are exponentiated against the
 * running maximum and the accumulated output is rescaled when that maximum grows. One
 * (b, h) per OpenMP work item, its queries in order: results do not depend on the thread
 * count. */
#include <math.h>
#include <string.h>

#include "cpu.h"
#include "vmath.h"

#define KCH 256                /* keys per chunk: scores live on the stack */
#define DEC_PAR_MIN (1L << 16) /* below this many multiply-adds a parallel region costs more */

void ct_cpu_attention_decode(ct_kctx *ctx, void *out_, const void *q_, const void *kc_, const void *vc_, int B,
                             int Tq, int pos0, int maxT, int NH, int NKV, int D, int ldq, int window)
{
    float *out = out_;
    const float *qall = q_, *kall = kc_, *vall = vc_;
    const int G = NH / NKV, C = NH * D, ldkv = NKV * D;
    const float scale = 1.0f / sqrtf((float)D);
    const long work = (long)B * NH * Tq * (pos0 + Tq) * D;

#pragma omp parallel for collapse(2) schedule(static) if (work >= DEC_PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *k = kall + (size_t)b * maxT * ldkv + (size_t)(h / G) * D;
            const float *v = vall + (size_t)b * maxT * ldkv + (size_t)(h / G) * D;
            float sc[KCH];
            for (int i = 0; i < Tq; i++) {
                const int p = pos0 + i, lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
                const float *q = qall + ((size_t)b * Tq + i) * ldq + (size_t)h * D;
                float *o = out + ((size_t)b * Tq + i) * C + (size_t)h * D;
                float mx = -INFINITY, l = 0.0f;
                memset(o, 0, (size_t)D * sizeof(float));
                for (int s0 = lo; s0 <= p; s0 += KCH) {
                    const int n = p + 1 - s0 < KCH ? p + 1 - s0 : KCH;
                    for (int j = 0; j < n; j++) sc[j] = scale * ct_vdot(q, k + (size_t)(s0 + j) * ldkv, D);
                    const float cm = ct_vmax(sc, n), m2 = cm > mx ? cm : mx;
                    /* the first chunk rescales nothing: o and l are 0 and exp(-inf) is 0 */
                    const float f = ct_vexpf(mx - m2);
                    for (int d = 0; d < D; d++) o[d] *= f;
                    for (int j = 0; j < n; j++) sc[j] = ct_vexpf(sc[j] - m2);
                    l = l * f + ct_vsum(sc, n);
                    for (int j = 0; j < n; j++) {
                        const float *vr = v + (size_t)(s0 + j) * ldkv;
                        for (int d = 0; d < D; d++) o[d] += sc[j] * vr[d];
                    }
                    mx = m2;
                }
                const float inv = 1.0f / l;
                for (int d = 0; d < D; d++) o[d] *= inv;
            }
        }
}

void ct_cpu_copy_rows(ct_kctx *ctx, void *dst_, int ldd, const void *src_, int lds, int rows, int cols)
{
    float *dst = dst_;
    const float *src = src_;
#pragma omp parallel for schedule(static) if ((long)rows * cols >= DEC_PAR_MIN)
    for (int r = 0; r < rows; r++)
        memcpy(dst + (size_t)r * ldd, src + (size_t)r * lds, (size_t)cols * sizeof(float));
}
