/* vmath.h — private: elementwise math written so loops calling it vectorise (libm's expf
 * does not without -ffast-math). */
#ifndef CT_KERNELS_CPU_VMATH_H
#define CT_KERNELS_CPU_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) within about 1 ulp over [-87.3, 88] (checked against double exp on every float of
 * [-87.3, 0]); exactly 0 below -87.33654, exp(88) above 88, NaN stays NaN. Cephes' range
 * reduction (x = n ln2 + r, |r| <= ln2/2, ln2 split in two so n ln2 is exact enough), a
 * degree-6 polynomial, and 2^n built in the exponent bits. The argument is clamped before
 * the int conversion so that conversion always sees a finite value. */
static inline float ct_vexpf(float x)
{
    const float lo = -87.33654f, hi = 88.0f;
    float xc = x > lo ? x : lo; /* NaN becomes lo here; it is restored at the end */
    xc = xc < hi ? xc : hi;
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = xc - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * (r * r) + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    y *= scale;
    y = x < lo ? 0.0f : y;
    return x != x ? x : y;
}

/* Row reductions with 16 fixed lanes: they vectorise without reassociation, so a result
 * depends neither on the data's address nor on the compiler's choice of vector width. */
static inline float ct_vsum(const float *x, int n)
{
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += x[i + j];
    for (; i < n; i++) acc[i & 15] += x[i];
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

static inline float ct_vdot(const float *x, const float *y, int n)
{
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += x[i + j] * y[i + j];
    for (; i < n; i++) acc[i & 15] += x[i] * y[i];
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

/* Maximum is exact in any order, so an OpenMP simd reduction is safe here. */
static inline float ct_vmax(const float *x, int n)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

#endif
