/* test_kernels_lora.c — the CPU backend's LoRA adapter ops (lora_fwd, lora_scratch_len,
 * lora_bwd), called through the backend table:
 *   - forward against a naive double-precision reference, without dropout and with it; the
 *     reference draws its mask from the definition written in kernels.h, re-implemented here,
 *     so the kernel's mask is checked against the contract, not against itself;
 *   - backward against central finite differences of L = sum(g * out) on that reference (for a
 *     fixed seed the op is linear in x and in each of A, B, so differences are exact up to
 *     rounding), with every gradient output pre-filled, so each check also tests "backward
 *     ADDS"; dx NULL, dA and dB NULL; scale != 1; odd sizes; scratch filled with NaN first;
 *   - the mask: keeps about 1 - p of a large array, equal for equal seeds, different for
 *     different ones, and equal element for element to the documented definition;
 *   - determinism: bit-identical results run to run and across thread counts 1..4.
 * Exit status is non-zero on any failed check. */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "kernels.h"

static const ct_backend *be;
static ct_kctx *kc;
static uint64_t rng = 0x10a4;

/* Tolerances: forward vs double reference; gradients vs finite differences. */
#define FWD_RTOL 1e-5
#define FWD_ATOL 1e-6
#define GRAD_RTOL 1e-4
#define GRAD_ATOL 1e-5
#define FD_H 1e-4

static float *rand_f(size_t n, float lo, float hi)
{
    float *x = ct_test_alloc(n);
    ct_test_fill(x, n, &rng, lo, hi);
    return x;
}




/* scratch for lora_scratch_len(N, K, r) elements, filled with NaN: its contents on entry must
 * not matter */
static float *nan_scratch(int N, int K, int r)
{
    size_t n = be->lora_scratch_len(N, K, r);
    float *s = ct_test_alloc(n);
    for (size_t i = 0; i < n; i++) s[i] = NAN;
    return s;
}

/* ------------------------------------------------------------------ the mask, from kernels.h */

/* kernels.h: z = seed ^ (i * 0x9E3779B97F4A7C15), splitmix64's finalizer; element i is kept
 * iff (uint32_t)(z >> 32) >= (uint32_t)(p * 2^32, in double, truncated). */
static int ref_keep(uint64_t seed, uint64_t i, float p)
{
    if (p <= 0.0f) return 1;
    uint32_t thr = (uint32_t)((double)p * 4294967296.0);
    uint64_t z = seed ^ (i * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (uint32_t)(z >> 32) >= thr;
}

/* ------------------------------------------------------------------ reference */

typedef struct {
    const double *x, *A, *B, *g; /* x[N,K], A[r,K], B[M,r], g[N,M] */
    int N, K, M, r;
    double scale;
    float p;
    uint64_t seed;
} lora_args;

/* h[N,r] = drop(x) . A^T and the adapter's output o[N,M] = scale * h . B^T (either may be NULL) */
static void lora_ref(const lora_args *a, double *h, double *o)
{
    double inv = 1.0 / (1.0 - (double)a->p), hrow[64]; /* r <= 64 in these tests */
    for (int n = 0; n < a->N; n++) {
        for (int j = 0; j < a->r; j++) {
            double s = 0;
            for (int k = 0; k < a->K; k++) {
                size_t i = (size_t)n * a->K + k;
                double xd = ref_keep(a->seed, i, a->p) ? a->x[i] * inv : 0.0;
                s += xd * a->A[(size_t)j * a->K + k];
            }
            hrow[j] = s;
            if (h) h[(size_t)n * a->r + j] = s;
        }
        if (o)
            for (int m = 0; m < a->M; m++) {
                double s = 0;
                for (int j = 0; j < a->r; j++) s += hrow[j] * a->B[(size_t)m * a->r + j];
                o[(size_t)n * a->M + m] = a->scale * s;
            }
    }
}

static double lora_loss(const void *p)
{
    const lora_args *a = p;
    double *o = ct_test_alloc_d((size_t)a->N * a->M), L = 0;
    lora_ref(a, NULL, o);
    for (size_t i = 0; i < (size_t)a->N * a->M; i++) L += a->g[i] * o[i];
    free(o);
    return L;
}

static double *fd_grad(const lora_args *a, double *x, size_t n)
{
    double *grad = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++) {
        double save = x[i];
        x[i] = save + FD_H;
        double lp = lora_loss(a);
        x[i] = save - FD_H;
        double lm = lora_loss(a);
        x[i] = save;
        grad[i] = (lp - lm) / (2 * FD_H);
    }
    return grad;
}

/* ------------------------------------------------------------------ forward and backward */

static void test_lora(int N, int K, int M, int r, float scale, float p, uint64_t seed)
{
    char what[160];
    size_t nk = (size_t)N * K, ak = (size_t)r * K, mr = (size_t)M * r, nm = (size_t)N * M, nr = (size_t)N * r;
    float *x = rand_f(nk, -1, 1), *A = rand_f(ak, -1, 1), *B = rand_f(mr, -1, 1), *g = rand_f(nm, -1, 1);
    double *x_d = ct_test_to_d(x, nk), *A_d = ct_test_to_d(A, ak), *B_d = ct_test_to_d(B, mr), *g_d = ct_test_to_d(g, nm);
    lora_args a = {x_d, A_d, B_d, g_d, N, K, M, r, scale, p, seed};
    const char *tag = p > 0 ? "dropout" : "no dropout";

    /* forward: out is the base layer's output, which the adapter adds into; h starts as garbage */
    float *p_out = rand_f(nm, -2, 2), *out = ct_test_copy(p_out, nm), *h = rand_f(nr, -9, 9);
    float *scratch = nan_scratch(N, K, r);
    double *want_h = ct_test_alloc_d(nr), *want_o = ct_test_alloc_d(nm);
    be->lora_fwd(kc, out, h, x, A, B, p > 0 ? scratch : NULL, N, K, M, r, scale, p, seed);
    lora_ref(&a, want_h, want_o);
    double *want_out = ct_test_plus_prefill(want_o, p_out, nm);
    snprintf(what, sizeof what, "lora_fwd h (%s, scale %g, N %d K %d M %d r %d)", tag, scale, N, K, M, r);
    CHECK_CLOSE(what, h, want_h, nr, FWD_RTOL, FWD_ATOL);
    snprintf(what, sizeof what, "lora_fwd out (prefilled; %s, scale %g)", tag, scale);
    CHECK_CLOSE(what, out, want_out, nm, FWD_RTOL, FWD_ATOL);

    /* backward, every gradient pre-filled */
    double *fd_x = fd_grad(&a, x_d, nk), *fd_A = fd_grad(&a, A_d, ak), *fd_B = fd_grad(&a, B_d, mr);
    float *p_dx = rand_f(nk, -1, 1), *p_dA = rand_f(ak, -1, 1), *p_dB = rand_f(mr, -1, 1);
    double *w_dx = ct_test_plus_prefill(fd_x, p_dx, nk), *w_dA = ct_test_plus_prefill(fd_A, p_dA, ak);
    double *w_dB = ct_test_plus_prefill(fd_B, p_dB, mr);
    float *dx = ct_test_copy(p_dx, nk), *dA = ct_test_copy(p_dA, ak), *dB = ct_test_copy(p_dB, mr);
    be->lora_bwd(kc, dx, dA, dB, g, x, h, A, B, scratch, N, K, M, r, scale, p, seed);
    snprintf(what, sizeof what, "lora_bwd dx (prefilled; %s, scale %g)", tag, scale);
    CHECK_CLOSE(what, dx, w_dx, nk, GRAD_RTOL, GRAD_ATOL);
    snprintf(what, sizeof what, "lora_bwd dA (prefilled; %s, scale %g)", tag, scale);
    CHECK_CLOSE(what, dA, w_dA, ak, GRAD_RTOL, GRAD_ATOL);
    snprintf(what, sizeof what, "lora_bwd dB (prefilled; %s, scale %g)", tag, scale);
    CHECK_CLOSE(what, dB, w_dB, mr, GRAD_RTOL, GRAD_ATOL);
    /* a dropped element of x gets no gradient at all: its prefill survives bit for bit */
    int dropped = 0, intact = 1;
    for (size_t i = 0; i < nk; i++)
        if (!ref_keep(seed, i, p)) {
            dropped++;
            intact &= dx[i] == p_dx[i];
        }
    CHECK(intact);
    if (p >= 0.2f) CHECK(dropped > 0); /* the case exercises the mask at all */

    /* dx NULL (the adapter's input needs no gradient from this path): dA, dB unchanged */
    float *dA2 = ct_test_copy(p_dA, ak), *dB2 = ct_test_copy(p_dB, mr);
    for (size_t i = 0; i < be->lora_scratch_len(N, K, r); i++) scratch[i] = NAN;
    be->lora_bwd(kc, NULL, dA2, dB2, g, x, h, A, B, scratch, N, K, M, r, scale, p, seed);
    CHECK(memcmp(dA2, dA, ak * sizeof(float)) == 0);
    CHECK(memcmp(dB2, dB, mr * sizeof(float)) == 0);

    /* dA and dB NULL: dx unchanged */
    float *dx2 = ct_test_copy(p_dx, nk);
    be->lora_bwd(kc, dx2, NULL, NULL, g, x, h, A, B, scratch, N, K, M, r, scale, p, seed);
    CHECK(memcmp(dx2, dx, nk * sizeof(float)) == 0);

    free(x); free(A); free(B); free(g); free(x_d); free(A_d); free(B_d); free(g_d);
    free(p_out); free(out); free(h); free(scratch); free(want_h); free(want_o); free(want_out);
    free(fd_x); free(fd_A); free(fd_B); free(p_dx); free(p_dA); free(p_dB); free(w_dx); free(w_dA); free(w_dB);
    free(dx); free(dA); free(dB); free(dA2); free(dB2); free(dx2);
}

/* ------------------------------------------------------------------ the mask */

/* The kernel's mask over n elements, read through the op: with K = r = M = 1, A = B = 1 and
 * x = 1, h[i] = drop(x)[i], which is 1/(1-p) where element i is kept and 0 where not.
 * out[n] is a buffer the op adds h into. */
static void kernel_mask(unsigned char *keep, float *h, float *out, const float *ones, float *scratch, int n,
                        float p, uint64_t seed)
{
    const float one = 1.0f;
    be->lora_fwd(kc, out, h, ones, &one, &one, scratch, n, 1, 1, 1, 1.0f, p, seed);
    for (int i = 0; i < n; i++) keep[i] = h[i] != 0.0f;
}

static void test_mask(void)
{
    enum { n = 1 << 20 };
    float *ones = ct_test_alloc(n), *h = ct_test_alloc(n), *out = ct_test_alloc(n);
    float *scratch = nan_scratch(n, 1, 1);
    unsigned char *k1 = malloc(n), *k2 = malloc(n);
    CHECK(k1 && k2);
    for (int i = 0; i < n; i++) ones[i] = 1.0f;

    const float ps[] = {0.0f, 0.1f, 0.3f, 0.5f, 0.9f};
    for (size_t t = 0; t < sizeof ps / sizeof ps[0]; t++) {
        float p = ps[t];
        uint64_t seed = 0x1234567 + t;
        kernel_mask(k1, h, out, ones, scratch, n, p, seed);
        long kept = 0, agree = 0, right_value = 0;
        float inv = 1.0f / (1.0f - p);
        for (int i = 0; i < n; i++) {
            kept += k1[i];
            agree += k1[i] == ref_keep(seed, (uint64_t)i, p);
            right_value += !k1[i] || h[i] == inv;
        }
        double frac = (double)kept / n; /* standard deviation sqrt(p(1-p)/n) < 5e-4 */
        if (fabs(frac - (1.0 - p)) > 0.005) {
            fprintf(stderr, "mask with p = %g keeps %.4f of the elements, want about %.4f\n", p, frac, 1.0 - p);
            ct_test_failures++;
        }
        CHECK(agree == n);       /* the kernel's mask is the documented one */
        CHECK(right_value == n); /* kept elements carry 1/(1-p) */
        if (p == 0.0f) CHECK(kept == n);
    }

    /* equal seeds: the same mask; different seeds (low bit, high bit): different masks,
     * differing on about 2p(1-p) of the elements */
    const float p = 0.3f;
    const uint64_t s0 = 0xfeedfacecafebeefull;
    const uint64_t others[] = {s0 ^ 1, s0 ^ (1ull << 63), 0};
    kernel_mask(k1, h, out, ones, scratch, n, p, s0);
    kernel_mask(k2, h, out, ones, scratch, n, p, s0);
    CHECK(memcmp(k1, k2, n) == 0);
    for (size_t t = 0; t < sizeof others / sizeof others[0]; t++) {
        kernel_mask(k2, h, out, ones, scratch, n, p, others[t]);
        long differ = 0;
        for (int i = 0; i < n; i++) differ += k1[i] != k2[i];
        double frac = (double)differ / n, want = 2 * p * (1 - p);
        if (fabs(frac - want) > 0.01) {
            fprintf(stderr, "masks for seeds %016llx and %016llx differ on %.4f of the elements, want about %.4f\n",
                    (unsigned long long)s0, (unsigned long long)others[t], frac, want);
            ct_test_failures++;
        }
    }
    free(ones); free(h); free(out); free(scratch); free(k1); free(k2);
}

/* ------------------------------------------------------------------ determinism */

/* Forward and backward on sizes large enough for the parallel mask loops, from inputs rebuilt
 * from a fixed seed; every output goes into res. With res == NULL, returns the float count. */
static size_t det_lora(float *res, float p)
{
    enum { N = 515, K = 257, M = 193, r = 8 };
    size_t total = (size_t)N * M + N * r + N * K + r * K + M * r;
    if (!res) return total;
    uint64_t s = 31;
    float *x = ct_test_alloc((size_t)N * K), *A = ct_test_alloc(r * K), *B = ct_test_alloc(M * r);
    float *g = ct_test_alloc((size_t)N * M), *scratch = nan_scratch(N, K, r);
    ct_test_fill(x, (size_t)N * K, &s, -1, 1);
    ct_test_fill(A, r * K, &s, -1, 1);
    ct_test_fill(B, M * r, &s, -1, 1);
    ct_test_fill(g, (size_t)N * M, &s, -1, 1);
    float *out = res, *h = out + (size_t)N * M, *dx = h + (size_t)N * r, *dA = dx + (size_t)N * K;
    float *dB = dA + r * K;
    ct_test_fill(res, total, &s, -1, 1); /* prefilled outputs */
    be->lora_fwd(kc, out, h, x, A, B, scratch, N, K, M, r, 2.0f, p, 77);
    be->lora_bwd(kc, dx, dA, dB, g, x, h, A, B, scratch, N, K, M, r, 2.0f, p, 77);
    free(x); free(A); free(B); free(g); free(scratch);
    return total;
}

static size_t det_lora_p0(float *res) { return det_lora(res, 0.0f); }
static size_t det_lora_p1(float *res) { return det_lora(res, 0.1f); }

static void check_deterministic(const char *what, size_t (*f)(float *))
{
    static const int thread_counts[] = {1, 2, 3, 4};
    enum { NT = sizeof thread_counts / sizeof thread_counts[0] };
    size_t n = f(NULL);
    float *first = ct_test_alloc(n), *again = ct_test_alloc(n);
    int saved = omp_get_max_threads();
    /* every thread count, then the first one again: run-to-run and across thread counts */
    for (int i = 0; i <= NT; i++) {
        int nt = thread_counts[i % NT];
        omp_set_num_threads(nt);
        f(i == 0 ? first : again);
        if (i > 0 && memcmp(first, again, n * sizeof(float)) != 0) {
            fprintf(stderr, "%s: results with %d thread(s) differ from those with %d\n", what, nt,
                    thread_counts[0]);
            ct_test_failures++;
        }
    }
    omp_set_num_threads(saved);
    free(first);
    free(again);
}

int main(void)
{
    be = ct_backend_cpu();
    kc = be->kctx_init(0);
    CHECK(be && kc && be->elem_size == sizeof(float));
    CHECK(be->lora_fwd && be->lora_bwd && be->lora_scratch_len);

    test_lora(7, 13, 11, 3, 1.0f, 0.0f, 1);
    test_lora(7, 13, 11, 3, 2.5f, 0.0f, 2);
    test_lora(7, 13, 11, 3, 2.5f, 0.3f, 3);
    test_lora(7, 13, 11, 3, 0.5f, 0.3f, 0xdeadbeefcafef00dull);
    test_lora(5, 40, 9, 8, 2.0f, 0.5f, 4); /* r = 8, more dropped than kept at some rows */
    test_lora(1, 1, 1, 1, 1.5f, 0.0f, 5);
    test_mask();

    check_deterministic("lora (no dropout)", det_lora_p0);
    check_deterministic("lora (dropout 0.1)", det_lora_p1);

    be->kctx_free(kc);
    return ct_test_finish("test_kernels_lora");
}
