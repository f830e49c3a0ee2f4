/* sumsq.c — sum of squares in double, fp32 input, on the CPU.
 *
 * Deterministic for any thread count: the input is split into NCHUNK chunks whose bounds
 * depend only on n; each chunk is summed by one thread over 8 fixed lanes, and the chunk
 * sums are combined in chunk order. */
#include "cpu.h"

#define NCHUNK 64

static double sumsq_range(const float *x, size_t n)
{
    double acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += (double)x[i + j] * (double)x[i + j]; /* exact products */
    for (; i < n; i++) acc[i & 7] += (double)x[i] * (double)x[i];
    double s = 0.0;
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

double ct_cpu_sumsq(ct_kctx *ctx, const void *g, size_t n)
{
    const float *x = g;
    const size_t chunk = (n + NCHUNK - 1) / NCHUNK;
    double part[NCHUNK];

#pragma omp parallel for schedule(static) if (n > 65536)
    for (int c = 0; c < NCHUNK; c++) {
        size_t lo = (size_t)c * chunk, hi = lo + chunk;
        if (lo > n) lo = n;
        if (hi > n) hi = n;
        part[c] = sumsq_range(x + lo, hi - lo);
    }
    double s = 0.0;
    for (int c = 0; c < NCHUNK; c++) s += part[c];
    return s;
}
