/* test_kernels_attention.c — the CPU backend's attention and fused softmax/cross-entropy
 * against double-precision references: forward values, backward against central finite
 * differences of the reference, the "backward adds" contract, causality, determinism. */
#include <omp.h>
#include <string.h>

#include "check.h"
#include "kernels.h"

/* ---------------------------------------------------------------- attention reference */

/* out[B*T,C] from qkv[B*T,3C], double throughout, straight from the definition. */
static void ref_attn_fwd(double *out, const double *qkv, int B, int T, int C, int NH)
{
    const int hs = C / NH;
    const double scale = 1.0 / sqrt((double)hs);
    double *p = ct_test_alloc_d((size_t)T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const double *q = qkv + ((size_t)b * T + t) * 3 * C + h * hs;
                double mx = -INFINITY, sum = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const double *k = qkv + ((size_t)b * T + t2) * 3 * C + C + h * hs;
                    double s = 0.0;
                    for (int i = 0; i < hs; i++) s += q[i] * k[i];
                    p[t2] = s * scale;
                    if (p[t2] > mx) mx = p[t2];
                }
                for (int t2 = 0; t2 <= t; t2++) sum += (p[t2] = exp(p[t2] - mx));
                double *o = out + ((size_t)b * T + t) * C + h * hs;
                for (int i = 0; i < hs; i++) o[i] = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const double *v = qkv + ((size_t)b * T + t2) * 3 * C + 2 * C + h * hs;
                    for (int i = 0; i < hs; i++) o[i] += p[t2] / sum * v[i];
                }
            }
    free(p);
}

/* dqkv = d(sum(dout . out))/dqkv, analytic, double; checked against differences below. */
static void ref_attn_bwd(double *dqkv, const double *dout, const double *qkv, int B, int T, int C, int NH)
{
    const int hs = C / NH;
    const double scale = 1.0 / sqrt((double)hs);
    double *p = ct_test_alloc_d((size_t)T), *dp = ct_test_alloc_d((size_t)T);
    memset(dqkv, 0, (size_t)B * T * 3 * C * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const size_t rq = ((size_t)b * T + t) * 3 * C + h * hs;
                const double *q = qkv + rq, *dO = dout + ((size_t)b * T + t) * C + h * hs;
                double mx = -INFINITY, sum = 0.0, d = 0.0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const double *k = qkv + ((size_t)b * T + t2) * 3 * C + C + h * hs;
                    double s = 0.0;
                    for (int i = 0; i < hs; i++) s += q[i] * k[i];
                    p[t2] = s * scale;
                    if (p[t2] > mx) mx = p[t2];
                }
                for (int t2 = 0; t2 <= t; t2++) sum += (p[t2] = exp(p[t2] - mx));
                for (int t2 = 0; t2 <= t; t2++) {
                    const size_t r2 = ((size_t)b * T + t2) * 3 * C + h * hs;
                    p[t2] /= sum;
                    dp[t2] = 0.0;
                    for (int i = 0; i < hs; i++) {
                        dp[t2] += dO[i] * qkv[r2 + 2 * C + i];
                        dqkv[r2 + 2 * C + i] += p[t2] * dO[i];
                    }
                    d += p[t2] * dp[t2];
                }
                for (int t2 = 0; t2 <= t; t2++) {
                    const size_t r2 = ((size_t)b * T + t2) * 3 * C + h * hs;
                    const double ds = p[t2] * (dp[t2] - d) * scale;
                    for (int i = 0; i < hs; i++) {
                        dqkv[rq + i] += ds * qkv[r2 + C + i];
                        dqkv[r2 + C + i] += ds * q[i];
                    }
                }
            }
    free(p);
    free(dp);
}

static double ref_attn_loss(const double *qkv, const double *g, double *out, int B, int T, int C, int NH)
{
    ref_attn_fwd(out, qkv, B, T, C, NH);
    double L = 0.0;
    for (size_t i = 0; i < (size_t)B * T * C; i++) L += g[i] * out[i];
    return L;
}

static double *to_double(const float *x, size_t n)
{
    double *d = ct_test_alloc_d(n);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

/* The op on one problem: forward vs the reference, backward vs the analytic reference (and,
 * when fd, vs central differences of the reference loss), adding into a prefilled dqkv. */
static void attn_case(const ct_backend *be, ct_kctx *ctx, int B, int T, int C, int NH, int fd, uint64_t seed)
{
    char what[96];
    const size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
    float *qkv = ct_test_alloc(nqkv), *out = ct_test_alloc(nout), *dout = ct_test_alloc(nout);
    float *dqkv = ct_test_alloc(nqkv), *d0 = ct_test_alloc(nqkv);
    float *stats = be->alloc(be->attention_stats_len(B, T, NH) * sizeof(float));
    ct_test_fill(qkv, nqkv, &seed, -2.0f, 2.0f);
    ct_test_fill(dout, nout, &seed, -1.0f, 1.0f);
    ct_test_fill(d0, nqkv, &seed, -1.0f, 1.0f);
    memcpy(dqkv, d0, nqkv * sizeof(float));

    double *qkv_d = to_double(qkv, nqkv), *g_d = to_double(dout, nout);
    double *out_ref = ct_test_alloc_d(nout), *dqkv_ref = ct_test_alloc_d(nqkv), *want = ct_test_alloc_d(nqkv);
    ref_attn_fwd(out_ref, qkv_d, B, T, C, NH);
    ref_attn_bwd(dqkv_ref, g_d, qkv_d, B, T, C, NH);

    be->attention_fwd(ctx, out, stats, qkv, B, T, C, NH);
    snprintf(what, sizeof what, "attention fwd B=%d T=%d C=%d NH=%d", B, T, C, NH);
    CHECK_CLOSE(what, out, out_ref, nout, 1e-5, 1e-6);

    be->attention_bwd(ctx, dqkv, stats, dout, qkv, out, B, T, C, NH);
    for (size_t i = 0; i < nqkv; i++) want[i] = d0[i] + dqkv_ref[i];
    snprintf(what, sizeof what, "attention bwd (adds) B=%d T=%d C=%d NH=%d", B, T, C, NH);
    CHECK_CLOSE(what, dqkv, want, nqkv, 1e-4, 1e-5);

    if (fd) {
        /* central differences of L = sum(dout . out) in double, every input perturbed */
        const double h = 1e-5;
        double *scratch = ct_test_alloc_d(nout), *num = ct_test_alloc_d(nqkv);
        float *grad = ct_test_alloc(nqkv);
        for (size_t i = 0; i < nqkv; i++) {
            const double x = qkv_d[i];
            qkv_d[i] = x + h;
            const double lp = ref_attn_loss(qkv_d, g_d, scratch, B, T, C, NH);
            qkv_d[i] = x - h;
            const double lm = ref_attn_loss(qkv_d, g_d, scratch, B, T, C, NH);
            qkv_d[i] = x;
            num[i] = (lp - lm) / (2 * h);
        }
        for (size_t i = 0; i < nqkv; i++) grad[i] = dqkv[i] - d0[i];
        snprintf(what, sizeof what, "attention bwd vs differences B=%d T=%d C=%d NH=%d", B, T, C, NH);
        CHECK_CLOSE(what, grad, num, nqkv, 1e-4, 1e-5);
        /* and the analytic reference itself, which the larger cases rely on */
        for (size_t i = 0; i < nqkv; i++) grad[i] = (float)dqkv_ref[i];
        CHECK_CLOSE("reference attention bwd vs differences", grad, num, nqkv, 1e-6, 1e-7);
        free(scratch);
        free(num);
        free(grad);
    }

    free(qkv), free(out), free(dout), free(dqkv), free(d0);
    free(qkv_d), free(g_d), free(out_ref), free(dqkv_ref), free(want);
    be->free(stats);
}

/* Changing token t0 (its q, k and v) leaves every earlier output bit-identical, and a
 * gradient flowing only from outputs before t0 leaves exactly zero at t0 and after. */
static void attn_causality(const ct_backend *be, ct_kctx *ctx)
{
    const int B = 2, T = 70, C = 16, NH = 2, t0 = 41;
    const size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
    uint64_t seed = 7;
    float *qkv = ct_test_alloc(nqkv), *out1 = ct_test_alloc(nout), *out2 = ct_test_alloc(nout);
    float *dout = ct_test_alloc(nout), *dqkv = ct_test_alloc(nqkv);
    float *stats = be->alloc(be->attention_stats_len(B, T, NH) * sizeof(float));
    ct_test_fill(qkv, nqkv, &seed, -2.0f, 2.0f);
    be->attention_fwd(ctx, out1, stats, qkv, B, T, C, NH);
    for (int b = 0; b < B; b++) ct_test_fill(qkv + ((size_t)b * T + t0) * 3 * C, 3 * C, &seed, -2.0f, 2.0f);
    be->attention_fwd(ctx, out2, stats, qkv, B, T, C, NH);
    for (int b = 0; b < B; b++) {
        const size_t row = (size_t)b * T;
        CHECK(memcmp(out1 + row * C, out2 + row * C, (size_t)t0 * C * sizeof(float)) == 0);
        int differs = 0; /* the changed token and a later one must see the change */
        for (int c = 0; c < C; c++)
            differs += out1[(row + t0) * C + c] != out2[(row + t0) * C + c] &&
                       out1[(row + T - 1) * C + c] != out2[(row + T - 1) * C + c];
        CHECK(differs > 0);
    }

    for (int b = 0; b < B; b++) ct_test_fill(dout + (size_t)b * T * C, (size_t)t0 * C, &seed, -1.0f, 1.0f);
    be->attention_bwd(ctx, dqkv, stats, dout, qkv, out2, B, T, C, NH);
    int nonzero_after = 0, nonzero_before = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < 3 * C; c++) {
                const float d = dqkv[((size_t)b * T + t) * 3 * C + c];
                if (t >= t0) nonzero_after += d != 0.0f;
                else nonzero_before += d != 0.0f;
            }
    CHECK(nonzero_after == 0);
    CHECK(nonzero_before > 0);
    free(qkv), free(out1), free(out2), free(dout), free(dqkv);
    be->free(stats);
}

/* fwd + bwd twice with two threads and once with one: all three bit-identical. */
static void attn_determinism(const ct_backend *be, ct_kctx *ctx)
{
    const int B = 2, T = 150, C = 24, NH = 3;
    const size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
    uint64_t seed = 11;
    float *qkv = ct_test_alloc(nqkv), *dout = ct_test_alloc(nout);
    float *out[3], *dqkv[3];
    float *stats = be->alloc(be->attention_stats_len(B, T, NH) * sizeof(float));
    ct_test_fill(qkv, nqkv, &seed, -2.0f, 2.0f);
    ct_test_fill(dout, nout, &seed, -1.0f, 1.0f);
    const int saved = omp_get_max_threads();
    for (int r = 0; r < 3; r++) {
        omp_set_num_threads(r < 2 ? 2 : 1);
        out[r] = ct_test_alloc(nout);
        dqkv[r] = ct_test_alloc(nqkv);
        be->attention_fwd(ctx, out[r], stats, qkv, B, T, C, NH);
        be->attention_bwd(ctx, dqkv[r], stats, dout, qkv, out[r], B, T, C, NH);
    }
    omp_set_num_threads(saved);
    for (int r = 1; r < 3; r++) {
        CHECK(memcmp(out[0], out[r], nout * sizeof(float)) == 0);
        CHECK(memcmp(dqkv[0], dqkv[r], nqkv * sizeof(float)) == 0);
    }
    for (int r = 0; r < 3; r++) free(out[r]), free(dqkv[r]);
    free(qkv), free(dout);
    be->free(stats);
}

/* ---------------------------------------------------------------- cross-entropy */

/* losses (0 where ignored) and probabilities of logits[N,V], double */
static void ref_xent(double *loss, double *probs, const double *x, const int32_t *tg, int N, int V)
{
    for (int i = 0; i < N; i++) {
        const double *r = x + (size_t)i * V;
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j < V; j++) mx = r[j] > mx ? r[j] : mx;
        for (int j = 0; j < V; j++) sum += exp(r[j] - mx);
        const double lse = mx + log(sum);
        loss[i] = tg[i] >= 0 ? lse - r[tg[i]] : 0.0;
        if (probs)
            for (int j = 0; j < V; j++) probs[(size_t)i * V + j] = exp(r[j] - lse);
    }
}

static double ref_xent_total(const double *x, const int32_t *tg, int N, int V, double dloss, double *loss)
{
    ref_xent(loss, NULL, x, tg, N, V);
    double L = 0.0;
    for (int i = 0; i < N; i++) L += dloss * loss[i];
    return L;
}

/* Losses and the gradient written over the logits vs the reference; with fd, the gradient vs
 * central differences of the reference sum(dloss * loss_i). Ignored rows: zero loss, zero
 * gradient. dloss = 0 (evaluation): the same losses, a zero gradient. */
static void xent_case(const ct_backend *be, ct_kctx *ctx, float *logits, const int32_t *tg, int N, int V, int fd)
{
    char what[64];
    const size_t n = (size_t)N * V;
    const float dloss = 0.37f;
    double *x = to_double(logits, n), *loss_ref = ct_test_alloc_d(N), *probs_ref = ct_test_alloc_d(n);
    float *losses = ct_test_alloc(N), *eval = ct_test_copy(logits, n), *eval_losses = ct_test_alloc(N);
    ref_xent(loss_ref, probs_ref, x, tg, N, V);

    be->xent(ctx, losses, logits, tg, dloss, N, V, V);
    snprintf(what, sizeof what, "xent losses N=%d V=%d", N, V);
    CHECK_CLOSE(what, losses, loss_ref, N, 1e-6, 1e-6);
    for (int i = 0; i < N; i++)
        if (tg[i] < 0) CHECK(losses[i] == 0.0f);
    double *want = ct_test_alloc_d(n);
    for (int i = 0; i < N; i++) {
        int zero = 1;
        for (int j = 0; j < V; j++) {
            const size_t k = (size_t)i * V + j;
            want[k] = tg[i] < 0 ? 0.0 : (probs_ref[k] - (j == tg[i])) * dloss;
            zero &= logits[k] == 0.0f;
        }
        if (tg[i] < 0) CHECK(zero);
    }
    snprintf(what, sizeof what, "xent gradient N=%d V=%d", N, V);
    CHECK_CLOSE(what, logits, want, n, 2e-6, 1e-9);

    be->xent(ctx, eval_losses, eval, tg, 0.0f, N, V, V);
    CHECK(!memcmp(eval_losses, losses, N * sizeof(float)));
    int zero = 1;
    for (size_t k = 0; k < n; k++) zero &= eval[k] == 0.0f;
    CHECK(zero);
    free(want);
    if (fd) {
        const double h = 1e-4;
        double *num = ct_test_alloc_d(n), *scratch = ct_test_alloc_d(N);
        for (size_t k = 0; k < n; k++) {
            const double x0 = x[k];
            x[k] = x0 + h;
            const double lp = ref_xent_total(x, tg, N, V, dloss, scratch);
            x[k] = x0 - h;
            const double lm = ref_xent_total(x, tg, N, V, dloss, scratch);
            x[k] = x0;
            num[k] = (lp - lm) / (2 * h);
        }
        snprintf(what, sizeof what, "xent gradient vs differences N=%d V=%d", N, V);
        CHECK_CLOSE(what, logits, num, n, 1e-5, 1e-8);
        free(num);
        free(scratch);
    }
    free(x), free(loss_ref), free(probs_ref), free(losses), free(eval), free(eval_losses);
}

/* Rows ld > V apart: the padding columns hold garbage on entry, count for nothing, and leave
 * with a zero gradient; the real columns match the unpadded op bit for bit. */
static void xent_padded(const ct_backend *be, ct_kctx *ctx, uint64_t *seed)
{
    enum { N = 4, V = 13, LD = 24 };
    const int32_t tg[N] = {2, -1, 12, 0};
    float dense[N * V], padded[N * LD], ld_losses[N], losses[N];
    ct_test_fill(padded, N * LD, seed, -50.0f, 50.0f);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < V; j++) dense[i * V + j] = padded[i * LD + j] = padded[i * LD + j] / 10.0f;
    be->xent(ctx, losses, dense, tg, 0.25f, N, V, V);
    be->xent(ctx, ld_losses, padded, tg, 0.25f, N, V, LD);
    CHECK(!memcmp(losses, ld_losses, sizeof losses));
    for (int i = 0; i < N; i++) {
        CHECK(!memcmp(dense + i * V, padded + i * LD, V * sizeof(float)));
        for (int j = V; j < LD; j++) CHECK(padded[i * LD + j] == 0.0f);
    }
}

static void xent_tests(const ct_backend *be, ct_kctx *ctx)
{
    uint64_t seed = 3;
    xent_padded(be, ctx, &seed);
    {
        enum { N = 6, V = 37 };
        const int32_t tg[N] = {3, -1, 0, 36, 5, -1};
        float logits[N * V];
        ct_test_fill(logits, N * V, &seed, -5.0f, 5.0f);
        for (int j = 0; j < V; j++) logits[4 * V + j] += 1000.0f; /* no overflow */
        for (int j = 0; j < V; j++) logits[1 * V + j] -= 1000.0f;
        logits[3 * V + 36] = -200.0f; /* the target's probability underflows; its loss must not */
        xent_case(be, ctx, logits, tg, N, V, 1);
    }
    {
        /* GPT-2's vocabulary: the sum over 50k terms must stay accurate */
        enum { N = 3, V = 50257 };
        const int32_t tg[N] = {17, V - 1, -1};
        float *logits = ct_test_alloc((size_t)N * V);
        ct_test_fill(logits, (size_t)N * V, &seed, -10.0f, 10.0f);
        xent_case(be, ctx, logits, tg, N, V, 0);
        free(logits);
    }
}

int main(void)
{
    const ct_backend *be = ct_backend_cpu();
    ct_kctx *ctx = be->kctx_init(0);
    CHECK(ctx != NULL);

    attn_case(be, ctx, 2, 7, 12, 3, 1, 1);
    attn_case(be, ctx, 1, 5, 8, 1, 1, 2);
    attn_case(be, ctx, 1, 3, 6, 2, 1, 3);
    attn_case(be, ctx, 2, 70, 16, 2, 0, 4);  /* more than one row block, ragged last block */
    attn_case(be, ctx, 1, 193, 8, 1, 0, 5);
    attn_case(be, ctx, 1, 128, 32, 4, 0, 6); /* block boundary exactly at T */
    attn_causality(be, ctx);
    attn_determinism(be, ctx);
    xent_tests(be, ctx);

    be->kctx_free(ctx);
    return ct_test_finish("test_kernels_attention");
}
