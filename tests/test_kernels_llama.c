/* test_kernels_llama.c — the CPU backend's Llama-family ops through the backend table:
 *   - rmsnorm_fwd/bwd against a double reference (values, rstd) and central differences,
 *     adding into prefilled gradients; dw == NULL gives the same dinp bit for bit;
 *   - rope_fwd against a naive reference whose angle is the fp32 product (as Hugging Face
 *     forms it), on heads inside wider rows (other channels untouched); rope_bwd against its
 *     naive reference and as the transpose: <rope_fwd(x), y> = <x, rope_bwd(y)>;
 *   - swiglu_fwd/bwd against a double reference and central differences, extreme gates;
 *   - attention_decode: prefill then chunks and single tokens through a KV cache filled by
 *     copy_rows must reproduce attention_fwd over the whole sequence row by row (GQA, with
 *     and without a window, more keys than one chunk); cache rows past the position hold
 *     NaN, so reading one fails;
 *   - copy_rows: the block copied, everything else in dst untouched;
 *   - determinism: bit-identical results for 1, 2 and 3 threads.
 * Exit status is non-zero on any failed check. */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "kernels.h"

static const ct_backend *be;
static ct_kctx *kc;
static uint64_t rng = 0x11a3a;

#define FD_H 1e-4

static float *rand_f(size_t n, float lo, float hi)
{
    float *x = ct_test_alloc(n);
    ct_test_fill(x, n, &rng, lo, hi);
    return x;
}

/* ------------------------------------------------------------------ rmsnorm */

/* out[N,C] and rstd[N] of the double reference; returns sum(g * out) when g is given */
static double rms_ref(const double *x, const double *w, const double *g, int N, int C, double eps, double *out,
                      double *rstd)
{
    double L = 0.0;
    for (int n = 0; n < N; n++) {
        const double *xr = x + (size_t)n * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += xr[c] * xr[c];
        const double r = 1.0 / sqrt(ss / C + eps);
        if (rstd) rstd[n] = r;
        for (int c = 0; c < C; c++) {
            const double o = xr[c] * r * w[c];
            if (out) out[(size_t)n * C + c] = o;
            if (g) L += g[(size_t)n * C + c] * o;
        }
    }
    return L;
}

/* analytic gradients of sum(g * out): dx[N,C], dw[C] */
static void rms_ref_bwd(const double *x, const double *w, const double *g, int N, int C, double eps, double *dx,
                        double *dw)
{
    memset(dw, 0, (size_t)C * sizeof(double));
    for (int n = 0; n < N; n++) {
        const double *xr = x + (size_t)n * C, *gr = g + (size_t)n * C;
        double ss = 0.0, gx = 0.0;
        for (int c = 0; c < C; c++) ss += xr[c] * xr[c], gx += gr[c] * w[c] * xr[c];
        const double r = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) {
            dx[(size_t)n * C + c] = r * (w[c] * gr[c] - r * r * gx / C * xr[c]);
            dw[c] += gr[c] * xr[c] * r;
        }
    }
}

/* fd = central differences of sum(g * out) with respect to every element of v (x or w) */
static void rms_fd(double *fd, double *v, size_t n, const double *x, const double *w, const double *g, int N, int C,
                   double eps)
{
    for (size_t i = 0; i < n; i++) {
        const double v0 = v[i];
        v[i] = v0 + FD_H;
        const double lp = rms_ref(x, w, g, N, C, eps, NULL, NULL);
        v[i] = v0 - FD_H;
        const double lm = rms_ref(x, w, g, N, C, eps, NULL, NULL);
        v[i] = v0;
        fd[i] = (lp - lm) / (2 * FD_H);
    }
}

/* Forward vs the reference; backward into prefilled gradients vs the analytic reference and
 * (when fd) vs differences; then dw == NULL: the same dinp, bit for bit. */
static void test_rmsnorm(int N, int C, float lo, float hi, int fd)
{
    char what[96];
    const float eps = 1e-5f;
    const size_t n = (size_t)N * C;
    float *x = rand_f(n, lo, hi), *w = rand_f(C, -1.5f, 1.5f), *g = rand_f(n, -1, 1);
    float *out = rand_f(n, -9, 9), *rstd = rand_f(N, -9, 9), *dx = rand_f(n, -1, 1), *dw = rand_f(C, -1, 1);
    float *dx0 = ct_test_copy(dx, n), *dw0 = ct_test_copy(dw, C);
    double *xd = ct_test_to_d(x, n), *wd = ct_test_to_d(w, C), *gd = ct_test_to_d(g, n);
    double *out_ref = ct_test_alloc_d(n), *rstd_ref = ct_test_alloc_d(N);
    double *dx_ref = ct_test_alloc_d(n), *dw_ref = ct_test_alloc_d(C);
    rms_ref(xd, wd, NULL, N, C, eps, out_ref, rstd_ref);
    rms_ref_bwd(xd, wd, gd, N, C, eps, dx_ref, dw_ref);

    be->rmsnorm_fwd(kc, out, rstd, x, w, N, C, eps);
    snprintf(what, sizeof what, "rmsnorm_fwd out N=%d C=%d", N, C);
    CHECK_CLOSE(what, out, out_ref, n, 1e-6, 1e-7);
    snprintf(what, sizeof what, "rmsnorm_fwd rstd N=%d C=%d", N, C);
    CHECK_CLOSE(what, rstd, rstd_ref, N, 1e-6, 0);

    be->rmsnorm_bwd(kc, dx, dw, g, x, w, rstd, N, C);
    double *want_dx = ct_test_plus_prefill(dx_ref, dx0, n), *want_dw = ct_test_plus_prefill(dw_ref, dw0, C);
    snprintf(what, sizeof what, "rmsnorm_bwd dinp (prefilled) N=%d C=%d", N, C);
    CHECK_CLOSE(what, dx, want_dx, n, 5e-6, 5e-7);
    snprintf(what, sizeof what, "rmsnorm_bwd dw (prefilled) N=%d C=%d", N, C);
    CHECK_CLOSE(what, dw, want_dw, C, 5e-6, 5e-6);

    if (fd) {
        double *fdx = ct_test_alloc_d(n), *fdw = ct_test_alloc_d(C);
        float *r = ct_test_alloc(n);
        rms_fd(fdx, xd, n, xd, wd, gd, N, C, eps);
        rms_fd(fdw, wd, C, xd, wd, gd, N, C, eps);
        for (size_t i = 0; i < n; i++) r[i] = (float)dx_ref[i];
        CHECK_CLOSE("reference rmsnorm dinp vs differences", r, fdx, n, 1e-6, 1e-8);
        for (int i = 0; i < C; i++) r[i] = (float)dw_ref[i];
        CHECK_CLOSE("reference rmsnorm dw vs differences", r, fdw, C, 1e-6, 1e-8);
        for (size_t i = 0; i < n; i++) r[i] = dx[i] - dx0[i];
        CHECK_CLOSE("rmsnorm_bwd dinp vs differences", r, fdx, n, 1e-4, 1e-5);
        free(fdx), free(fdw), free(r);
    }

    float *dx_null = ct_test_copy(dx0, n);
    be->rmsnorm_bwd(kc, dx_null, NULL, g, x, w, rstd, N, C);
    CHECK(memcmp(dx_null, dx, n * sizeof(float)) == 0);

    free(x), free(w), free(g), free(out), free(rstd), free(dx), free(dw), free(dx0), free(dw0), free(dx_null);
    free(xd), free(wd), free(gd), free(out_ref), free(rstd_ref), free(dx_ref), free(dw_ref), free(want_dx),
        free(want_dw);
}

/* ------------------------------------------------------------------ rope */

/* Rows of ld floats holding nh heads of D channels at offset `off`; the naive rotation, in
 * double, of the fp32 angle pos * inv_freq (sign -1: the backward's rotation by -a). */
static void rope_ref(double *y, const float *x, const int32_t *pos, const float *inv_freq, int N, int nh, int D,
                     int ld, int off, double sign)
{
    for (size_t i = 0; i < (size_t)N * ld; i++) y[i] = x[i];
    for (int n = 0; n < N; n++)
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < D / 2; i++) {
                const float a = (float)pos[n] * inv_freq[i];
                const double c = cos((double)a), s = sign * sin((double)a);
                const size_t j = (size_t)n * ld + off + (size_t)h * D + i;
                y[j] = x[j] * c - x[j + D / 2] * s;
                y[j + D / 2] = x[j + D / 2] * c + x[j] * s;
            }
}

static double dot_fd(const float *x, const float *y, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * y[i];
    return s;
}

static void test_rope(int N, int nh, int D, int ld, int off)
{
    char what[96];
    const size_t n = (size_t)N * ld;
    int32_t *pos = malloc((size_t)N * sizeof *pos);
    float *inv_freq = ct_test_alloc((size_t)D / 2);
    CHECK(pos != NULL);
    /* Llama's frequencies; positions up to 1e5, where an angle formed in double would
     * differ from the fp32 product by up to ~4e-3 rad and fail the comparison */
    for (int i = 0; i < D / 2; i++) inv_freq[i] = (float)(1.0 / pow(10000.0, 2.0 * i / D));
    for (int r = 0; r < N; r++) pos[r] = r % 3 == 0 ? r : (int32_t)(ct_test_rand_u64(&rng) % 100000);
    float *x = rand_f(n, -2, 2), *y = rand_f(n, -2, 2);
    float *fx = ct_test_copy(x, n), *by = ct_test_copy(y, n);
    double *want = ct_test_alloc_d(n);

    be->rope_fwd(kc, fx + off, pos, inv_freq, N, nh, D, ld);
    rope_ref(want, x, pos, inv_freq, N, nh, D, ld, off, 1.0);
    snprintf(what, sizeof what, "rope_fwd N=%d nh=%d D=%d ld=%d", N, nh, D, ld);
    CHECK_CLOSE(what, fx, want, n, 1e-6, 1e-6);
    be->rope_bwd(kc, by + off, pos, inv_freq, N, nh, D, ld);
    rope_ref(want, y, pos, inv_freq, N, nh, D, ld, off, -1.0);
    snprintf(what, sizeof what, "rope_bwd N=%d nh=%d D=%d ld=%d", N, nh, D, ld);
    CHECK_CLOSE(what, by, want, n, 1e-6, 1e-6);

    /* channels outside the heads: untouched, bit for bit */
    size_t changed = 0;
    for (int r = 0; r < N; r++)
        for (int c = 0; c < ld; c++)
            if (c < off || c >= off + nh * D) {
                const size_t j = (size_t)r * ld + c;
                changed += memcmp(&fx[j], &x[j], 4) != 0 || memcmp(&by[j], &y[j], 4) != 0;
            }
    CHECK(changed == 0);

    /* the transpose: <fwd(x), y> = <x, bwd(y)>; and bwd undoes fwd up to rounding */
    const double lhs = dot_fd(fx, y, n), rhs = dot_fd(x, by, n);
    CHECK(fabs(lhs - rhs) <= 1e-5 * sqrt((double)n));
    float *back = ct_test_copy(fx, n);
    be->rope_bwd(kc, back + off, pos, inv_freq, N, nh, D, ld);
    double *xd = ct_test_to_d(x, n);
    CHECK_CLOSE("rope_bwd(rope_fwd(x)) = x", back, xd, n, 1e-6, 1e-6);

    free(pos), free(inv_freq), free(x), free(y), free(fx), free(by), free(want), free(back), free(xd);
}

/* ------------------------------------------------------------------ swiglu */

static double silu_d(double x) { return x / (1.0 + exp(-x)); }

static void test_swiglu(size_t n, int fd)
{
    char what[96];
    float *gate = rand_f(n, -12, 12), *up = rand_f(n, -3, 3), *g = rand_f(n, -1, 1);
    /* extremes: saturated and overflowing exp(-x), finite results */
    const float ext[] = {-100.0f, -88.5f, -30.0f, 30.0f, 100.0f, 0.0f};
    for (size_t i = 0; i < sizeof ext / sizeof ext[0] && i < n; i++) gate[i] = ext[i];
    float *out = rand_f(n, -9, 9), *dgate = rand_f(n, -1, 1), *dup = rand_f(n, -1, 1);
    float *dgate0 = ct_test_copy(dgate, n), *dup0 = ct_test_copy(dup, n);
    double *want = ct_test_alloc_d(n), *wg = ct_test_alloc_d(n), *wu = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++) {
        const double x = gate[i], s = 1.0 / (1.0 + exp(-x));
        want[i] = silu_d(x) * up[i];
        wg[i] = dgate0[i] + (double)g[i] * up[i] * (s + x * s * (1.0 - s));
        wu[i] = dup0[i] + (double)g[i] * silu_d(x);
    }
    be->swiglu_fwd(kc, out, gate, up, n);
    snprintf(what, sizeof what, "swiglu_fwd n=%zu", n);
    CHECK_CLOSE(what, out, want, n, 2e-6, 1e-30);
    be->swiglu_bwd(kc, dgate, dup, g, gate, up, n);
    /* atol: adding into a prefill of ~1 rounds at ~2e-7, wherever the sum cancels */
    snprintf(what, sizeof what, "swiglu_bwd dgate (prefilled) n=%zu", n);
    CHECK_CLOSE(what, dgate, wg, n, 1e-5, 1e-6);
    snprintf(what, sizeof what, "swiglu_bwd dup (prefilled) n=%zu", n);
    CHECK_CLOSE(what, dup, wu, n, 1e-5, 1e-6);

    if (fd) { /* the reference derivatives themselves, by central differences */
        float *r = ct_test_alloc(n);
        double *num = ct_test_alloc_d(n);
        for (size_t i = 0; i < n; i++) {
            const double x = gate[i], u = up[i], d = g[i];
            num[i] = d * u * (silu_d(x + FD_H) - silu_d(x - FD_H)) / (2 * FD_H);
            r[i] = dgate[i] - dgate0[i];
        }
        CHECK_CLOSE("swiglu_bwd dgate vs differences", r, num, n, 1e-4, 1e-6);
        for (size_t i = 0; i < n; i++) {
            const double x = gate[i], d = g[i];
            num[i] = d * (silu_d(x) * (up[i] + FD_H) - silu_d(x) * (up[i] - FD_H)) / (2 * FD_H);
            r[i] = dup[i] - dup0[i];
        }
        CHECK_CLOSE("swiglu_bwd dup vs differences", r, num, n, 1e-4, 1e-6);
        free(r), free(num);
    }
    free(gate), free(up), free(g), free(out), free(dgate), free(dup), free(dgate0), free(dup0);
    free(want), free(wg), free(wu);
}

/* ------------------------------------------------------------------ copy_rows */

static void test_copy_rows(int rows, int cols, int lds, int ldd)
{
    float *src = rand_f((size_t)rows * lds, -1, 1), *dst = rand_f((size_t)rows * ldd, 5, 6);
    float *dst0 = ct_test_copy(dst, (size_t)rows * ldd);
    be->copy_rows(kc, dst, ldd, src, lds, rows, cols);
    size_t bad = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < ldd; c++) {
            const float *want = c < cols ? &src[(size_t)r * lds + c] : &dst0[(size_t)r * ldd + c];
            bad += memcmp(&dst[(size_t)r * ldd + c], want, sizeof(float)) != 0;
        }
    CHECK(bad == 0);
    free(src), free(dst), free(dst0);
}

/* ------------------------------------------------------------------ attention_decode */

/* One sequence batch through the cache: prefill P tokens at pos0 = 0, a chunk of 3, then
 * one token at a time; every output row against attention_fwd's row at that position. q, k,
 * v rows are GPT-2-style packed [B*T, (NH + 2 NKV) D]; the cache [B, maxT, NKV D] starts as
 * NaN, so any read past a query's position poisons its output. Returns the outputs'
 * concatenation in res[B*T*NH*D] for the determinism check. */
static void decode_run(int B, int T, int P, int maxT, int NH, int NKV, int D, int window, float *res)
{
    char what[128];
    const int ld = (NH + 2 * NKV) * D, C = NH * D, ckv = NKV * D;
    uint64_t s = 99 + (uint64_t)window;
    float *x = ct_test_alloc((size_t)B * T * ld), *full = ct_test_alloc((size_t)B * T * C);
    float *stats = ct_test_alloc(be->attention_stats_len(B, T, NH));
    float *kcache = ct_test_alloc((size_t)B * maxT * ckv), *vcache = ct_test_alloc((size_t)B * maxT * ckv);
    float *qbuf = ct_test_alloc((size_t)B * T * ld), *obuf = ct_test_alloc((size_t)B * T * C);
    ct_test_fill(x, (size_t)B * T * ld, &s, -2, 2);
    for (size_t i = 0; i < (size_t)B * maxT * ckv; i++) kcache[i] = vcache[i] = NAN;
    be->attention_fwd(kc, full, stats, x, x + C, x + C + ckv, NULL, B, T, NH, NKV, D, ld, ld, window);
    double *want = ct_test_to_d(full, (size_t)B * T * C);

    for (int pos0 = 0; pos0 < T;) {
        const int Tq = pos0 == 0 ? P : pos0 == P ? 3 : 1, n = pos0 + Tq > T ? T - pos0 : Tq;
        for (int b = 0; b < B; b++) { /* append this step's keys, gather its queries as [B*Tq] rows */
            const float *xr = x + ((size_t)b * T + pos0) * ld;
            be->copy_rows(kc, kcache + ((size_t)b * maxT + pos0) * ckv, ckv, xr + C, ld, n, ckv);
            be->copy_rows(kc, vcache + ((size_t)b * maxT + pos0) * ckv, ckv, xr + C + ckv, ld, n, ckv);
            be->copy_rows(kc, qbuf + (size_t)b * n * ld, ld, xr, ld, n, C);
        }
        be->attention_decode(kc, obuf, qbuf, kcache, vcache, B, n, pos0, maxT, NH, NKV, D, ld, window);
        for (int b = 0; b < B; b++) {
            float *got = res + ((size_t)b * T + pos0) * C;
            memcpy(got, obuf + (size_t)b * n * C, (size_t)n * C * sizeof(float));
            snprintf(what, sizeof what, "attention_decode B=%d NH=%d NKV=%d D=%d window=%d b=%d pos0=%d Tq=%d", B,
                     NH, NKV, D, window, b, pos0, n);
            CHECK_CLOSE(what, got, want + ((size_t)b * T + pos0) * C, (size_t)n * C, 1e-5, 2e-6);
        }
        pos0 += n;
    }
    free(x), free(full), free(stats), free(kcache), free(vcache), free(qbuf), free(obuf), free(want);
}

static void test_decode(int B, int T, int P, int maxT, int NH, int NKV, int D, int window)
{
    float *res = ct_test_alloc((size_t)B * T * NH * D);
    decode_run(B, T, P, maxT, NH, NKV, D, window, res);
    free(res);
}

/* ------------------------------------------------------------------ determinism */

/* Every op at sizes that take the parallel paths, prefilled gradients, all outputs in res
 * (res == NULL: only the count). */
static size_t det_llama(float *res)
{
    enum { N = 129, C = 771, NH = 6, D = 64, SW = 50000, DB = 2, DT = 70, DNH = 8, DNKV = 2, DD = 16 };
    const size_t n_rms = 2 * (size_t)N * C + N + C, n_rope = (size_t)N * NH * D * 2, n_sw = 3 * (size_t)SW;
    const size_t n_dec = (size_t)DB * DT * DNH * DD, total = n_rms + n_rope + n_sw + n_dec;
    if (!res) return total;
    uint64_t s = 5;
    float *x = ct_test_alloc((size_t)N * C), *w = ct_test_alloc(C), *g = ct_test_alloc((size_t)N * C);
    ct_test_fill(x, (size_t)N * C, &s, -3, 3);
    ct_test_fill(w, C, &s, -1, 1);
    ct_test_fill(g, (size_t)N * C, &s, -1, 1);
    ct_test_fill(res, total, &s, -1, 1);
    float *out = res, *rstd = out + (size_t)N * C, *dx = rstd + N, *dw = dx + (size_t)N * C;
    be->rmsnorm_fwd(kc, out, rstd, x, w, N, C, 1e-6f);
    be->rmsnorm_bwd(kc, dx, dw, g, x, w, rstd, N, C);

    int32_t pos[N];
    float inv_freq[D / 2];
    for (int i = 0; i < N; i++) pos[i] = 7 * i;
    for (int i = 0; i < D / 2; i++) inv_freq[i] = 1.0f / (float)(i + 1);
    float *rp = res + n_rms;
    be->rope_fwd(kc, rp, pos, inv_freq, N, NH, D, NH * D);
    be->rope_bwd(kc, rp + (size_t)N * NH * D, pos, inv_freq, N, NH, D, NH * D);

    float *sw = rp + n_rope;
    be->swiglu_fwd(kc, sw, x, g, SW);
    be->swiglu_bwd(kc, sw + SW, sw + 2 * SW, out, x, g, SW); /* dout: rmsnorm's output, in bounds */

    decode_run(DB, DT, 20, DT + 5, DNH, DNKV, DD, 24, sw + n_sw);
    free(x), free(w), free(g);
    return total;
}

static void check_deterministic(void)
{
    static const int threads[] = {1, 2, 3, 1};
    const size_t n = det_llama(NULL);
    float *first = ct_test_alloc(n), *again = ct_test_alloc(n);
    const int saved = omp_get_max_threads();
    for (int i = 0; i < 4; i++) {
        omp_set_num_threads(threads[i]);
        det_llama(i == 0 ? first : again);
        if (i > 0 && memcmp(first, again, n * sizeof(float)) != 0) {
            fprintf(stderr, "llama ops: results with %d thread(s) differ from those with 1\n", threads[i]);
            ct_test_failures++;
        }
    }
    omp_set_num_threads(saved);
    free(first), free(again);
}

int main(void)
{
    be = ct_backend_cpu();
    kc = be->kctx_init(0);
    CHECK(be && kc && be->rmsnorm_fwd && be->rope_fwd && be->swiglu_fwd && be->attention_decode && be->copy_rows);

    test_rmsnorm(5, 37, -2, 2, 1);
    test_rmsnorm(3, 16, 3, 5, 1);        /* far from 0: mean of squares dominated by the offset */
    test_rmsnorm(129, 771, -3, 3, 0);    /* the parallel paths */
    test_rmsnorm(2, 4096, -1e-3f, 1e-3f, 0); /* tiny inputs: eps matters */
    test_rope(7, 2, 8, 16, 0);
    test_rope(33, 3, 64, 3 * 64 + 2 * 64, 0);       /* q inside packed qkv rows */
    test_rope(33, 2, 64, 3 * 64 + 2 * 64, 3 * 64);  /* k inside them */
    test_rope(300, 8, 128, 8 * 128, 0);             /* the parallel path, more pairs than a chunk */
    test_swiglu(41, 1);
    test_swiglu(100003, 1);
    test_copy_rows(5, 7, 11, 9);
    test_copy_rows(600, 130, 200, 256);
    test_decode(2, 75, 30, 96, 8, 2, 16, 20);  /* GQA, window shorter than the prefill */
    test_decode(2, 75, 30, 75, 4, 4, 32, 0);   /* a full cache */
    test_decode(1, 300, 280, 320, 4, 2, 8, 0); /* more keys than one chunk of the online softmax */
    test_decode(1, 300, 1, 300, 8, 1, 128, 270);
    check_deterministic();

    be->kctx_free(kc);
    return ct_test_finish("test_kernels_llama");
}
